#!/usr/bin/python3
"""The proxied application of the demo: it knows who the user is only from
the X-Remote-User header that Apache's proxy sets (mod_rsession made the
session's user the request's user; the app has no session code at all)."""
import html
import os

user = os.environ.get("HTTP_X_REMOTE_USER", "")
print("Content-Type: text/html; charset=utf-8")
print()
print("""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Proxied app</title>
<style>body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; }</style></head>
<body><h1>A proxied application</h1>
<p>Apache says you are <strong id="remote-user">%s</strong>.</p>
<p><a href="/private/">Members only</a> &middot; <a href="/">Back</a></p>
</body></html>""" % html.escape(user))
