/*
 * A test module that drives mod_rsession's C API: SetHandler rsession-test,
 * then ?op=show | set&k=K&v=V | unset&k=K | invalidate | regenerate.
 * It prints what each call returned, one "name=value" per line.
 */
#include "httpd.h"
#include "http_config.h"
#include "http_protocol.h"
#include "apr_strings.h"
#include "mod_rsession.h"

static APR_OPTIONAL_FN_TYPE(rsession_id) *fn_id;
static APR_OPTIONAL_FN_TYPE(rsession_dir) *fn_dir;
static APR_OPTIONAL_FN_TYPE(rsession_get) *fn_get;
static APR_OPTIONAL_FN_TYPE(rsession_set) *fn_set;
static APR_OPTIONAL_FN_TYPE(rsession_invalidate) *fn_invalidate;
static APR_OPTIONAL_FN_TYPE(rsession_regenerate) *fn_regenerate;

static void retrieve(void)
{
    fn_id = APR_RETRIEVE_OPTIONAL_FN(rsession_id);
    fn_dir = APR_RETRIEVE_OPTIONAL_FN(rsession_dir);
    fn_get = APR_RETRIEVE_OPTIONAL_FN(rsession_get);
    fn_set = APR_RETRIEVE_OPTIONAL_FN(rsession_set);
    fn_invalidate = APR_RETRIEVE_OPTIONAL_FN(rsession_invalidate);
    fn_regenerate = APR_RETRIEVE_OPTIONAL_FN(rsession_regenerate);
}

static const char *arg(request_rec *r, const char *name)
{
    char *args = apr_pstrdup(r->pool, r->args ? r->args : "");
    char *last, *pair;
    for (pair = apr_strtok(args, "&", &last); pair; pair = apr_strtok(NULL, "&", &last)) {
        char *eq = strchr(pair, '=');
        if (eq) {
            *eq = '\0';
            if (!strcmp(pair, name)) {
                ap_unescape_url(eq + 1);
                return eq + 1;
            }
        }
    }
    return NULL;
}

static int handler(request_rec *r)
{
    const char *op, *k;
    if (!r->handler || strcmp(r->handler, "rsession-test"))
        return DECLINED;
    if (!fn_id || !fn_dir || !fn_get || !fn_set || !fn_invalidate || !fn_regenerate)
        return HTTP_INTERNAL_SERVER_ERROR;
    op = arg(r, "op");
    k = arg(r, "k");
    ap_set_content_type(r, "text/plain");
    if (op && !strcmp(op, "set"))
        ap_rprintf(r, "set=%d\n", fn_set(r, k, arg(r, "v")));
    else if (op && !strcmp(op, "unset"))
        ap_rprintf(r, "unset=%d\n", fn_set(r, k, NULL));
    else if (op && !strcmp(op, "invalidate"))
        ap_rprintf(r, "invalidate=%d\n", fn_invalidate(r));
    else if (op && !strcmp(op, "regenerate"))
        ap_rprintf(r, "regenerate=%d\n", fn_regenerate(r));
    ap_rprintf(r, "id=%s\n", fn_id(r) ? fn_id(r) : "(null)");
    ap_rprintf(r, "dir=%s\n", fn_dir(r) ? fn_dir(r) : "(null)");
    if (k)
        ap_rprintf(r, "get=%s\n", fn_get(r, k) ? fn_get(r, k) : "(null)");
    return OK;
}

static void register_hooks(apr_pool_t *p)
{
    ap_hook_optional_fn_retrieve(retrieve, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(handler, NULL, NULL, APR_HOOK_MIDDLE);
}

AP_DECLARE_MODULE(rsession_test) = {
    STANDARD20_MODULE_STUFF, NULL, NULL, NULL, NULL, NULL, register_hooks
};
