/* The bucket macro wrappers of shim.c, for shim.c and for bindgen. */
#ifndef RSESSION_SHIM_BUCKETS_H
#define RSESSION_SHIM_BUCKETS_H

#include "apr_buckets.h"

enum rsession_bucket_kind_e {
    RSESSION_BUCKET_MEMORY = 0,     /* heap, transient, pool, immortal */
    RSESSION_BUCKET_OTHER_DATA = 1, /* file, pipe, socket, mmap...: never read */
    RSESSION_BUCKET_EOS = 2,
    RSESSION_BUCKET_FLUSH = 3,
    RSESSION_BUCKET_OTHER_META = 4  /* EOC, EOR, error... */
};

/* NULL when the brigade is empty / at its end. */
apr_bucket *rsession_bucket_first(apr_bucket_brigade *bb);
apr_bucket *rsession_bucket_next(apr_bucket_brigade *bb, apr_bucket *e);
int rsession_bucket_kind(const apr_bucket *e);
apr_status_t rsession_bucket_read(apr_bucket *e, const char **str, apr_size_t *len);
void rsession_bucket_delete(apr_bucket *e);
void rsession_bucket_insert_before(apr_bucket *at, apr_bucket *e);
void rsession_brigade_append(apr_bucket_brigade *bb, apr_bucket *e);

#endif
