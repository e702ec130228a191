/* bindgen input: only the httpd/APR headers mod_rsession uses. Not compiled. */
#include "httpd.h"
#include "http_config.h"
#include "http_core.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"
#include "ap_mpm.h"
#include "unixd.h"
#include "apr_strings.h"
#include "apr_portable.h"
#include "apr_tables.h"
#include "apr_pools.h"
#include "apr_buckets.h"
#include "shim_buckets.h"

/* The directive table lives in shim.c (AP_INIT_* are macros). */
extern const command_rec rsession_cmds[];
void rsession_register_hooks(apr_pool_t *p);
/* The saving filter, as registered in rsession_register_hooks. */
extern ap_filter_rec_t *rsession_out_filter_handle;
extern ap_filter_rec_t *rsession_interim_filter_handle;
/* The body replay filter. */
extern ap_filter_rec_t *rsession_body_filter_handle;
