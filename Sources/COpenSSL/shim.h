#ifndef COATCHECK_COPENSSL_SHIM_H
#define COATCHECK_COPENSSL_SHIM_H

#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

// These are function-like macros over SSL_CTX_ctrl / SSL_ctrl; Swift
// cannot see them.
static inline int COpenSSL_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

static inline int COpenSSL_set_partial_writes(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
}

// Reads take whatever the socket has (several records at once), not a
// record header and then its body in two reads.
static inline int COpenSSL_set_read_ahead(SSL_CTX *ctx) {
    SSL_CTX_set_read_ahead(ctx, 1);
    return 1;
}

static inline int COpenSSL_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

static inline int COpenSSL_session_cache_client(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT);
}

#endif
