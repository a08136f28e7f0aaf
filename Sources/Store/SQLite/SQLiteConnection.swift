import CSQLite

/// Owns one `sqlite3*`, and finalizes the statements it prepared before
/// closing it. Not thread-safe (opened with NOMUTEX): one thread at a time.
final class Connection {
    private var db: OpaquePointer?
    private var statements: [Statement] = []
    /// The checkpointer whose WAL hook is on this connection (the writer's).
    /// The hook holds it unretained, and the writer may still commit after
    /// the store is gone (a store closed from a `done` callback leaves its
    /// writer to finish the queue alone), so the connection owns it: `close`
    /// stops and joins it first, and lets go of it only once the handle is
    /// closed. Neither the hook nor the checkpoint thread outlives the
    /// connection.
    private var checkpointer: Checkpointer?

    /// "unix-excl": the process holds the database's POSIX locks for as
    /// long as it has it open, and the WAL index lives in heap memory, not
    /// in a mapped `-shm` file. Only this process ever opens the database
    /// (the store's flock), so transactions then take no fcntl locks.
    static let vfs = "unix-excl"

    init(path: String, flags: Int32) throws(StoreError) {
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(path, &handle, flags, Connection.vfs)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_close_v2(handle)
            throw StoreError("sqlite: cannot open \(path): \(message)")
        }
        db = handle
        sqlite3_extended_result_codes(handle, 1)
        sqlite3_busy_timeout(handle, SQLiteStore.busyTimeoutMillis)
    }

    deinit { close() }

    var errorMessage: String {
        guard let db else { return "connection closed" }
        return String(cString: sqlite3_errmsg(db))
    }

    /// True outside a transaction (also after SQLite rolled one back).
    var isAutocommit: Bool {
        guard let db else { return true }
        return sqlite3_get_autocommit(db) != 0
    }

    /// The rowid of the last INSERT.
    var lastInsertRowID: Int64 {
        guard let db else { return 0 }
        return sqlite3_last_insert_rowid(db)
    }

    /// Rows changed by the last INSERT, UPDATE or DELETE.
    var changes: Int {
        guard let db else { return 0 }
        return Int(sqlite3_changes(db))
    }

    func prepare(_ sql: String) throws(StoreError) -> Statement {
        guard let db else { throw StoreError("sqlite: connection closed") }
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else {
            sqlite3_finalize(stmt)
            throw StoreError("sqlite: prepare: \(errorMessage)")
        }
        let statement = Statement(stmt)
        statements.append(statement)
        return statement
    }

    /// sqlite3_wal_hook: called after each commit with the WAL's frame count,
    /// with `checkpointer` as its context; the connection keeps it (above).
    func setWALHook(_ checkpointer: Checkpointer,
                    _ hook: @convention(c) (UnsafeMutableRawPointer?, OpaquePointer?, UnsafePointer<CChar>?, Int32) -> Int32) {
        guard let db else { return }
        self.checkpointer = checkpointer
        _ = sqlite3_wal_hook(db, hook, Unmanaged.passUnretained(checkpointer).toOpaque())
    }

    /// Runs SQL text without results (schema, pragmas).
    func execute(_ sql: String) throws(StoreError) {
        guard let db else { throw StoreError("sqlite: connection closed") }
        var error: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &error)
        if rc != SQLITE_OK {
            let message = error.map { String(cString: $0) } ?? errorMessage
            sqlite3_free(error)
            throw StoreError("sqlite: \(message)")
        }
    }

    /// The first column of the first row of `sql`, as text.
    func queryText(_ sql: String) throws(StoreError) -> String? {
        let s = try prepare(sql)
        defer { s.finalize() }
        return try s.step() ? s.text(0) : nil
    }

    /// WAL, full sync, and the schema (created, or checked for its version).
    func configureForWriting() throws(StoreError) {
        let mode = try queryText("PRAGMA journal_mode=WAL")
        guard mode?.lowercased() == "wal" else {
            throw StoreError("sqlite: cannot use WAL (journal_mode is \(mode ?? "unknown"))")
        }
        try execute("PRAGMA synchronous=FULL")
        guard let text = try queryText("PRAGMA user_version"), let version = Int(text) else {
            throw StoreError("sqlite: cannot read the schema version")
        }
        if version > 0 && version < 2 {
            throw StoreError("sqlite: schema version \(version) is from a development build of coatcheck; move the database away")
        }
        if version > SQLiteStore.schemaVersion {
            throw StoreError("sqlite: schema version \(version) is newer than this coatcheck (\(SQLiteStore.schemaVersion))")
        }
        if version < SQLiteStore.schemaVersion {
            do throws(StoreError) {
                try execute(version == 0 ? createSchema : migration(from: version))
            } catch {
                if !isAutocommit { try? execute("ROLLBACK") }
                throw error
            }
        }
    }

    /// Stops the checkpointer (if any), finalizes the statements, then
    /// closes. Idempotent.
    func close() {
        checkpointer?.stop()
        for statement in statements { statement.finalize() }
        statements = []
        if let db {
            sqlite3_close_v2(db)
            self.db = nil
        }
        checkpointer = nil
    }
}
