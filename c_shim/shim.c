/*
 * The C half of mod_rsession: the directive table and the hook table, both
 * built from httpd macros that Rust cannot expand. No logic lives here; every
 * function named below is declared in src/module.rs (through the adapters
 * of src/ffi/entry.rs).
 */
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"
#include "mpm_common.h"
#include "mod_auth.h"
#include "mod_rsession.h"
#include "mod_status.h"
#include "shim_buckets.h"

/* Rust entry points (src/module.rs). */
const char *rsession_cmd_take1(cmd_parms *cmd, void *dirconf, const char *arg);
const char *rsession_cmd_secret(cmd_parms *cmd, void *dirconf, const char *arg);
int rsession_post_config(apr_pool_t *pconf, apr_pool_t *plog, apr_pool_t *ptemp, server_rec *s);
void rsession_child_init(apr_pool_t *pchild, server_rec *s);
void rsession_child_stopping(apr_pool_t *pchild, int graceful);
int rsession_monitor(apr_pool_t *p, server_rec *s);
int rsession_post_read_request(request_rec *r);
int rsession_fixups(request_rec *r);
int rsession_fixups_after_index(request_rec *r);
void rsession_insert_filter(request_rec *r);
void rsession_insert_error_filter(request_rec *r);
apr_status_t rsession_out_filter(ap_filter_t *f, apr_bucket_brigade *bb);
apr_status_t rsession_body_filter(ap_filter_t *f, apr_bucket_brigade *bb, ap_input_mode_t mode,
                                  apr_read_type_e block, apr_off_t readbytes);
apr_status_t rsession_interim_filter(ap_filter_t *f, apr_bucket_brigade *bb);
int rsession_status_handler(request_rec *r);
int rsession_status_hook(request_rec *r, int flags);
const char *rsession_id(request_rec *r);
const char *rsession_dir(request_rec *r);
const char *rsession_get(request_rec *r, const char *key);
apr_status_t rsession_set(request_rec *r, const char *key, const char *value);
apr_status_t rsession_invalidate(request_rec *r);
apr_status_t rsession_regenerate(request_rec *r);
apr_status_t rsession_invalidate_user(request_rec *r);
int rsession_access_checker(request_rec *r);
int rsession_check_authn(request_rec *r);
int rsession_note_auth_failure(request_rec *r, const char *auth_type);
int rsession_authz_check(request_rec *r, const char *require_line, const void *parsed);
const char *rsession_authz_parse(cmd_parms *cmd, const char *require_line, const void **parsed);

/* The Rust side returns authz_status values as plain ints. */
_Static_assert(AUTHZ_DENIED == 0 && AUTHZ_GRANTED == 1 && AUTHZ_GENERAL_ERROR == 3
               && AUTHZ_DENIED_NO_USER == 4, "authz_status values");

static authz_status rsession_authz_trampoline(request_rec *r, const char *require_line,
                                              const void *parsed)
{
    return (authz_status)rsession_authz_check(r, require_line, parsed);
}

/* `Require rsession KEY[=VALUE] ...` */
static const authz_provider rsession_authz_provider = {
    &rsession_authz_trampoline,
    &rsession_authz_parse,
};

/* Added to requests by handle: adding by name lowercases and looks the
 * name up on every request. */
ap_filter_rec_t *rsession_out_filter_handle;
ap_filter_rec_t *rsession_interim_filter_handle;
/* Replays a request body read before the session lock was taken. */
ap_filter_rec_t *rsession_body_filter_handle;

/* APR's bucket and brigade macros, as functions Rust can call. */
apr_bucket *rsession_bucket_first(apr_bucket_brigade *bb)
{
    return APR_BRIGADE_EMPTY(bb) ? NULL : APR_BRIGADE_FIRST(bb);
}

apr_bucket *rsession_bucket_next(apr_bucket_brigade *bb, apr_bucket *e)
{
    e = APR_BUCKET_NEXT(e);
    return e == APR_BRIGADE_SENTINEL(bb) ? NULL : e;
}

int rsession_bucket_kind(const apr_bucket *e)
{
    if (APR_BUCKET_IS_EOS(e))
        return RSESSION_BUCKET_EOS;
    if (APR_BUCKET_IS_FLUSH(e))
        return RSESSION_BUCKET_FLUSH;
    if (APR_BUCKET_IS_METADATA(e))
        return RSESSION_BUCKET_OTHER_META;
    if (APR_BUCKET_IS_HEAP(e) || APR_BUCKET_IS_TRANSIENT(e)
        || APR_BUCKET_IS_POOL(e) || APR_BUCKET_IS_IMMORTAL(e))
        return RSESSION_BUCKET_MEMORY;
    return RSESSION_BUCKET_OTHER_DATA;
}

apr_status_t rsession_bucket_read(apr_bucket *e, const char **str, apr_size_t *len)
{
    return apr_bucket_read(e, str, len, APR_BLOCK_READ);
}

void rsession_bucket_delete(apr_bucket *e)
{
    apr_bucket_delete(e);
}

void rsession_bucket_insert_before(apr_bucket *at, apr_bucket *e)
{
    APR_BUCKET_INSERT_BEFORE(at, e);
}

void rsession_brigade_append(apr_bucket_brigade *bb, apr_bucket *e)
{
    APR_BRIGADE_INSERT_TAIL(bb, e);
}

/* S V: main server or <VirtualHost>. S V D H: also <Directory>/<Location>
 * and .htaccess under AllowOverride AuthConfig. */
#define RS_SV   RSRC_CONF
#define RS_SVDH (RSRC_CONF | ACCESS_CONF | OR_AUTHCFG)
#define RS_DH   (ACCESS_CONF | OR_AUTHCFG)
#define RS_TAKE1(name, where, help) AP_INIT_TAKE1(name, rsession_cmd_take1, NULL, where, help)

const command_rec rsession_cmds[] = {
    RS_TAKE1("RSession", RS_SVDH, "On|Off: sessions for requests under this container (default Off)"),
    RS_TAKE1("RSessionStore", RS_SV, "file:/abs/path, redis://[user@]host[:port][/db][?password_file=/path&prefix=P&timeout=MS], rediss://, unix:, redis-sentinel://, redis-cluster:// (default file: under DefaultRuntimeDir/rsession)"),
    AP_INIT_ITERATE("RSessionSecret", rsession_cmd_secret, NULL, RS_SV,
                    "HMAC keys, literal or file:/path; the first signs, all verify (default: generated, kept in DefaultRuntimeDir/rsession.key)"),
    RS_TAKE1("RSessionCookieName", RS_SVDH, "cookie name (default sid); a __Host- name forces Secure, Path=/ and no Domain"),
    RS_TAKE1("RSessionCookiePath", RS_SVDH, "cookie Path attribute (default /)"),
    RS_TAKE1("RSessionCookieDomain", RS_SVDH, "cookie Domain attribute (default unset)"),
    RS_TAKE1("RSessionCookieSecure", RS_SVDH, "On|Off|Auto: Secure attribute; Auto follows HTTPS (default Auto)"),
    RS_TAKE1("RSessionCookieHttpOnly", RS_SVDH, "On|Off: HttpOnly attribute (default On)"),
    RS_TAKE1("RSessionCookieSameSite", RS_SVDH, "Strict|Lax|None|Off: SameSite attribute; None implies Secure (default Lax)"),
    RS_TAKE1("RSessionCookieMaxAge", RS_SVDH, "seconds; 0 sends a browser-session cookie (default 0)"),
    RS_TAKE1("RSessionTimeout", RS_SVDH, "idle timeout in seconds (default 1800)"),
    RS_TAKE1("RSessionMaxLifetime", RS_SVDH, "absolute lifetime in seconds from creation; 0 = none (default 0)"),
    RS_TAKE1("RSessionTouchInterval", RS_SVDH, "seconds between rewrites of an unchanged session's access time (default 60)"),
    RS_TAKE1("RSessionLock", RS_SVDH, "On|Off: serialise requests of one session (default On)"),
    RS_TAKE1("RSessionLockTimeout", RS_SVDH, "seconds (decimals allowed) to wait for the session lock before 503 (default 10)"),
    RS_TAKE1("RSessionLockTTL", RS_SV, "seconds after which a shared store frees the lock of a vanished holder (default 120)"),
    RS_TAKE1("RSessionScratch", RS_SVDH, "On|Off: a private scratch directory per session (default On)"),
    RS_TAKE1("RSessionScratchRoot", RS_SV, "absolute parent of all scratch directories (default DefaultRuntimeDir/rsession-scratch)"),
    RS_TAKE1("RSessionEnv", RS_SVDH, "On|Off: export RSESSION_* environment variables (default On)"),
    RS_TAKE1("RSessionForwardHeaders", RS_SVDH, "On|Off: add X-RSession-* request headers for proxied backends (default Off)"),
    RS_TAKE1("RSessionUpdateHeader", RS_SVDH, "response header through which backends change the session (default X-RSession)"),
    RS_TAKE1("RSessionMaxDataSize", RS_SVDH, "largest encoded session data in bytes (default 65536)"),
    RS_TAKE1("RSessionCreate", RS_SVDH, "OnWrite|Always: keep a new session only once a request writes to it, or always (default OnWrite)"),
    RS_TAKE1("RSessionScratchGroup", RS_SV, "group whose members (php-fpm pools, suEXEC users) may also write scratch directories (setgid, 2770)"),
    RS_TAKE1("RSessionScope", RS_SV, "name sessions are bound to: a cookie from another scope gets a fresh session (default: the server's ServerName)"),
    RS_TAKE1("RSessionMaxSessions", RS_SV, "live sessions per store beyond which requests that would keep a new one get 503; 0 = no ceiling (default 0)"),
    RS_TAKE1("RSessionUser", RS_SVDH, "session data key whose value becomes the request's user (REMOTE_USER, %u, Require user) before authorization (default unset)"),
    RS_TAKE1("RSessionLoginURL", RS_DH, "with AuthType RSession: where visitors without a user are sent (302, the original URL in ?return=); unset: 401"),
    RS_TAKE1("RSessionGCInterval", RS_SV, "seconds between background sweeps of expired sessions; 0 disables (default 60)"),
    { NULL }
};

/* The table of contents: what mod_rsession does, and when. */
void rsession_register_hooks(apr_pool_t *p)
{
    ap_hook_post_config(rsession_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    /* The sweeper thread starts in each child, never in the parent. */
    ap_hook_child_init(rsession_child_init, NULL, NULL, APR_HOOK_MIDDLE);
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 110)
    /* Older servers lack the hook: lock waits then run to their timeout
     * when a child is stopped. */
    ap_hook_child_stopping(rsession_child_stopping, NULL, NULL, APR_HOOK_MIDDLE);
#endif
    /* In the parent, about every 10 s: starts the reaper of scratch
     * directories that RSessionScratchGroup members left unremovable. */
    ap_hook_monitor(rsession_monitor, NULL, NULL, APR_HOOK_MIDDLE);
    /* An internal redirect's request gets the body spooled ahead of the
     * lock before any of its phases can read it. */
    ap_hook_post_read_request(rsession_post_read_request, NULL, NULL, APR_HOOK_MIDDLE);
    /* Before mod_headers (LAST), so RequestHeader expressions see our notes. */
    ap_hook_fixups(rsession_fixups, NULL, NULL, APR_HOOK_MIDDLE);
    /* A directory's request, once mod_dir (LAST) made it its index file's. */
    ap_hook_fixups(rsession_fixups_after_index, NULL, NULL, APR_HOOK_REALLY_LAST);
    /* Save and set cookies from one output filter, on normal and error responses. */
    ap_hook_insert_filter(rsession_insert_filter, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_insert_error_filter(rsession_insert_error_filter, NULL, NULL, APR_HOOK_MIDDLE);
    rsession_out_filter_handle =
        ap_register_output_filter("RSESSION_OUT", rsession_out_filter, NULL, AP_FTYPE_CONTENT_SET);
    rsession_body_filter_handle =
        ap_register_input_filter("RSESSION_BODY", rsession_body_filter, NULL, AP_FTYPE_RESOURCE);
    /* Interim responses (1xx) and tunnels after a 101 reach only the
     * connection's filters; this one sits above TLS, so it sees plain text. */
    rsession_interim_filter_handle =
        ap_register_output_filter("RSESSION_INTERIM", rsession_interim_filter, NULL, AP_FTYPE_CONNECTION);
    /* RSessionUser, AuthType RSession and Require rsession: the session is
     * resolved in the first auth phase, so r->user is set before
     * mod_authz_core looks at any Require line. Per conf: subrequests and
     * redirects with the same config skip the phases (and share r->user). */
    ap_hook_check_access(rsession_access_checker, NULL, NULL, APR_HOOK_FIRST,
                         AP_AUTH_INTERNAL_PER_CONF);
    ap_hook_check_authn(rsession_check_authn, NULL, NULL, APR_HOOK_MIDDLE,
                        AP_AUTH_INTERNAL_PER_CONF);
    ap_hook_note_auth_failure(rsession_note_auth_failure, NULL, NULL, APR_HOOK_MIDDLE);
    ap_register_auth_provider(p, AUTHZ_PROVIDER_GROUP, "rsession", AUTHZ_PROVIDER_VERSION,
                              &rsession_authz_provider, AP_AUTH_INTERNAL_PER_CONF);
    ap_hook_handler(rsession_status_handler, NULL, NULL, APR_HOOK_MIDDLE);
    /* Our section of /server-status; called only when mod_status is loaded. */
    APR_OPTIONAL_HOOK(ap, status_hook, rsession_status_hook, NULL, NULL, APR_HOOK_MIDDLE);
    APR_REGISTER_OPTIONAL_FN(rsession_id);
    APR_REGISTER_OPTIONAL_FN(rsession_dir);
    APR_REGISTER_OPTIONAL_FN(rsession_get);
    APR_REGISTER_OPTIONAL_FN(rsession_set);
    APR_REGISTER_OPTIONAL_FN(rsession_invalidate);
    APR_REGISTER_OPTIONAL_FN(rsession_regenerate);
    APR_REGISTER_OPTIONAL_FN(rsession_invalidate_user);
}
