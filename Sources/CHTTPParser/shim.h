#ifndef COATCHECK_CHTTPPARSER_SHIM_H
#define COATCHECK_CHTTPPARSER_SHIM_H
#include <http_parser.h>

// HTTP_PARSER_ERRNO is a macro over a bitfield.
static inline enum http_errno CHTTPParser_errno(const http_parser *p) {
    return (enum http_errno)p->http_errno;
}
static inline unsigned CHTTPParser_method(const http_parser *p) { return p->method; }
static inline unsigned CHTTPParser_status(const http_parser *p) { return p->status_code; }
static inline unsigned CHTTPParser_flags(const http_parser *p) { return p->flags; }
#endif
