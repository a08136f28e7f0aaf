#ifndef COATCHECK_CLIBEVENT_SHIM_H
#define COATCHECK_CLIBEVENT_SHIM_H

// Debian's <event2/event-config.h> defines _GNU_SOURCE; pull the system
// headers in first so this module and SwiftGlibc agree on fd_set.
#include <sys/types.h>
#include <sys/time.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <sys/prctl.h>

#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/listener.h>
#include <event2/util.h>

// evtimer_new is a function-like macro; Swift cannot see it.
static inline struct event *CLibevent_evtimer_new(struct event_base *base, event_callback_fn cb, void *arg) {
    return event_new(base, -1, 0, cb, arg);
}

// evsignal_new is a function-like macro.
static inline struct event *CLibevent_evsignal_new(struct event_base *base, int signum, event_callback_fn cb, void *arg) {
    return event_new(base, signum, EV_SIGNAL | EV_PERSIST, cb, arg);
}

// evbuffer_add_printf is variadic; this formats one chunk-size line ("%zx\r\n").
static inline int CLibevent_evbuffer_add_chunk_header(struct evbuffer *buf, size_t size) {
    return evbuffer_add_printf(buf, "%zx\r\n", size);
}

// ioctl is variadic: the bytes a socket's send queue still holds (not yet
// acknowledged by the peer), or -1.
static inline int CLibevent_unsent_bytes(int fd) {
    int n = 0;
    return ioctl(fd, SIOCOUTQ, &n) < 0 ? -1 : n;
}

// prctl is variadic: names the calling thread (Linux keeps 15 bytes).
static inline void CLibevent_name_thread(const char *name) {
    prctl(PR_SET_NAME, name, 0, 0, 0);
}

#endif
