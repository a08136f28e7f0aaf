#ifndef COATCHECK_CSQLITE_SHIM_H
#define COATCHECK_CSQLITE_SHIM_H

#include <sqlite3.h>

// SQLITE_TRANSIENT is a cast macro Swift cannot import.
static inline sqlite3_destructor_type CSQLite_transient(void) { return SQLITE_TRANSIENT; }
static inline sqlite3_destructor_type CSQLite_static(void) { return SQLITE_STATIC; }

#endif
