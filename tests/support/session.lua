-- A mod_lua handler using mod_rsession: reads the note, writes through the
-- update header (the README shows this same file).
function handle(r)
  local id = r.notes['rsession-id'] or '(none)'
  local data = r.subprocess_env['RSESSION_DATA'] or ''
  local visits = tonumber(string.match(data, 'lua_visits=(%d+)') or '0') + 1
  r.headers_out['X-RSession'] = 'set lua_visits=' .. visits
  r.content_type = 'text/plain'
  r:puts('id=' .. id .. '\n')
  r:puts('lua_visits=' .. visits .. '\n')
  return apache2.OK
end
