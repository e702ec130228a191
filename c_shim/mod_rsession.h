/*
 * mod_rsession.h -- the public C interface of mod_rsession.
 *
 * Other modules reach a request's session through APR optional functions, so
 * they load and run whether or not mod_rsession is loaded:
 *
 *     #include "mod_rsession.h"
 *     static APR_OPTIONAL_FN_TYPE(rsession_get) *session_get;
 *     static void retrieve(void) { session_get = APR_RETRIEVE_OPTIONAL_FN(rsession_get); }
 *     ... ap_hook_optional_fn_retrieve(retrieve, NULL, NULL, APR_HOOK_MIDDLE);
 *     ... const char *user = session_get ? session_get(r, "user") : NULL;
 *
 * Every function takes any request of the session (main, subrequest or
 * internal redirect) and acts on the one session the initial request owns.
 * Strings returned live in r->pool. Calls on a request without a session
 * (RSession Off, or before the fixups phase) return NULL or APR_ENOENT.
 */
#ifndef MOD_RSESSION_H
#define MOD_RSESSION_H

#include "httpd.h"
#include "apr_optional.h"

/* The session id, 32 lowercase hex characters, or NULL. */
APR_DECLARE_OPTIONAL_FN(const char *, rsession_id, (request_rec *r));

/* Absolute path of the session's scratch directory, or NULL when
 * RSessionScratch is Off. */
APR_DECLARE_OPTIONAL_FN(const char *, rsession_dir, (request_rec *r));

/* The value stored under key, or NULL when the key is absent. */
APR_DECLARE_OPTIONAL_FN(const char *, rsession_get, (request_rec *r, const char *key));

/* Set key to value; value NULL removes the key. Saved at the end of the
 * request, before the lock is released. APR_EINVAL when the change would
 * exceed RSessionMaxDataSize (the session stays as it was); APR_EGENERAL
 * once the session has been saved (after the response headers went out). */
APR_DECLARE_OPTIONAL_FN(apr_status_t, rsession_set, (request_rec *r, const char *key, const char *value));

/* Delete the record and the scratch directory and expire the cookie. */
APR_DECLARE_OPTIONAL_FN(apr_status_t, rsession_invalidate, (request_rec *r));

/* New id and cookie, same data, scratch directory moved, old id dead. */
APR_DECLARE_OPTIONAL_FN(apr_status_t, rsession_regenerate, (request_rec *r));

/* "Log out everywhere": at the end of the request, end every session whose
 * RSessionUser key holds this session's user, this one included (in a
 * shared store, on every server). APR_ENOENT without a session,
 * APR_EGENERAL once the session has been saved or for a static file. */
APR_DECLARE_OPTIONAL_FN(apr_status_t, rsession_invalidate_user, (request_rec *r));

#endif /* MOD_RSESSION_H */
