import CSQLite

/// Where a statement's small bound values are copied: one buffer of
/// `capacity` bytes, filled front to back while binding and emptied by
/// `clear` after the statement is reset. A value that does not fit is left
/// to SQLite to copy. The buffer never moves, so what was bound stays valid.
private struct BindArena: ~Copyable {
    static let capacity = 8 << 10
    private var base: UnsafeMutableRawPointer?
    private var used = 0

    init() {}

    deinit { base?.deallocate() }

    /// The copy's address, or nil when it does not fit (or is empty).
    mutating func copy(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawPointer? {
        guard let source = bytes.baseAddress, !bytes.isEmpty, bytes.count <= BindArena.capacity - used else {
            return nil
        }
        if base == nil { base = .allocate(byteCount: BindArena.capacity, alignment: 16) }
        let target = base! + used
        target.copyMemory(from: source, byteCount: bytes.count)
        used += bytes.count
        return UnsafeRawPointer(target)
    }

    mutating func clear() { used = 0 }
}

/// Owns one `sqlite3_stmt*`. Bind errors are kept and thrown by the next
/// `step`; `run` and `step` errors carry `sqlite3_errmsg`.
final class Statement {
    private var handle: OpaquePointer?
    private var bindError: Int32 = SQLITE_OK
    /// Copies of this statement's bound text and blobs, until `reset`.
    private var arena = BindArena()

    init(_ handle: OpaquePointer) { self.handle = handle }

    deinit { finalize() }

    func finalize() {
        if let handle {
            sqlite3_finalize(handle)
            self.handle = nil
        }
    }

    private func noteBind(_ rc: Int32) {
        if rc != SQLITE_OK && bindError == SQLITE_OK { bindError = rc }
    }

    func bind(_ value: Int64?, at index: Int32) {
        guard let handle else { return }
        if let value {
            noteBind(sqlite3_bind_int64(handle, index, value))
        } else {
            noteBind(sqlite3_bind_null(handle, index))
        }
    }

    /// Binds a copy of `bytes` as text or a blob: in the arena when it has
    /// room (SQLITE_STATIC: no malloc, nothing to free), else SQLite's own.
    private func bindCopy(_ bytes: UnsafeRawBufferPointer, at index: Int32, text: Bool) {
        guard let handle else { return }
        guard let count = Int32(exactly: bytes.count) else { noteBind(SQLITE_TOOBIG); return }
        if count == 0 {
            noteBind(text ? sqlite3_bind_text(handle, index, "", 0, CSQLite_transient())
                          : sqlite3_bind_zeroblob(handle, index, 0))
            return
        }
        let copy = arena.copy(bytes)
        let pointer = copy ?? bytes.baseAddress
        let destructor = copy != nil ? CSQLite_static() : CSQLite_transient()
        if text {
            noteBind(sqlite3_bind_text(handle, index, pointer?.assumingMemoryBound(to: CChar.self), count, destructor))
        } else {
            noteBind(sqlite3_bind_blob(handle, index, pointer, count, destructor))
        }
    }

    /// A job id as its text, without making a String of it.
    func bind(_ id: JobID, at index: Int32) {
        id.withUTF8 { bindCopy(UnsafeRawBufferPointer($0), at: index, text: true) }
    }

    func bind(_ value: String?, at index: Int32) {
        guard handle != nil else { return }
        guard var value else { noteBind(sqlite3_bind_null(handle, index)); return }
        value.withUTF8 { bindCopy(UnsafeRawBufferPointer($0), at: index, text: true) }
    }

    /// An empty array is stored as an empty blob, not NULL.
    func bind(_ value: [UInt8]?, at index: Int32) {
        guard handle != nil else { return }
        guard let value else { noteBind(sqlite3_bind_null(handle, index)); return }
        value.withUnsafeBytes { bindCopy($0, at: index, text: false) }
    }

    private func failure(_ rc: Int32) -> StoreError {
        guard let handle, let db = sqlite3_db_handle(handle) else {
            return StoreError("sqlite: \(String(cString: sqlite3_errstr(rc)))")
        }
        return StoreError("sqlite: \(String(cString: sqlite3_errmsg(db)))")
    }

    /// True when a row is ready, false when done. Call `reset` after use.
    func step() throws(StoreError) -> Bool {
        guard let handle else { throw StoreError("sqlite: statement finalized") }
        if bindError != SQLITE_OK {
            let rc = bindError
            bindError = SQLITE_OK
            throw StoreError("sqlite: bind: \(String(cString: sqlite3_errstr(rc)))")
        }
        switch sqlite3_step(handle) {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        case let rc: throw failure(rc)
        }
    }

    /// Steps a statement that returns no rows, then resets it.
    func run() throws(StoreError) {
        defer { reset() }
        _ = try step()
    }

    /// Ready for new bindings; releases the statement's read snapshot and
    /// the copies of the values bound (a request head need not stay in
    /// memory until the next write).
    func reset() {
        guard let handle else { return }
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
        arena.clear()  // nothing points into it any more
        bindError = SQLITE_OK
    }

    private func isNull(_ column: Int32) -> Bool {
        guard let handle else { return true }
        return sqlite3_column_type(handle, column) == SQLITE_NULL
    }

    func int64(_ column: Int32) -> Int64? {
        guard let handle, !isNull(column) else { return nil }
        return sqlite3_column_int64(handle, column)
    }

    func text(_ column: Int32) -> String? {
        guard let handle, !isNull(column) else { return nil }
        guard let chars = sqlite3_column_text(handle, column) else { return "" }
        let count = Int(sqlite3_column_bytes(handle, column))
        return String(decoding: UnsafeBufferPointer(start: chars, count: count), as: UTF8.self)
    }

    func blob(_ column: Int32) -> [UInt8]? {
        guard let handle, !isNull(column) else { return nil }
        guard let bytes = sqlite3_column_blob(handle, column) else { return [] }
        let count = Int(sqlite3_column_bytes(handle, column))
        return Array(UnsafeRawBufferPointer(start: bytes, count: count))
    }
}
