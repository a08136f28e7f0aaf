#ifndef COATCHECK_CHIREDIS_SHIM_H
#define COATCHECK_CHIREDIS_SHIM_H

#include <hiredis/hiredis.h>
#include <hiredis/async.h>
#include <hiredis/adapters/libevent.h>

// The libevent adapter is a header of static functions; one entry point
// with a name of ours, so the Swift side never sees the adapter's.
static inline int CHiredis_attach(redisAsyncContext *context, struct event_base *base) {
    return redisLibeventAttach(context, base);
}

// The flags hiredis keeps on a context (REDIS_CONNECTED and friends are macros).
static inline int CHiredis_isConnected(const redisAsyncContext *context) {
    return (context->c.flags & REDIS_CONNECTED) != 0;
}

#endif
