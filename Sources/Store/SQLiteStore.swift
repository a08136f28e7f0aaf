import CSQLite
import Loop
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `store: "sqlite:PATH"`: jobs in one SQLite database (WAL,
/// `synchronous=FULL`), so an accepted job survives `kill -9` (SPEC §5).
///
/// Threads:
/// - Writes (`insert`, `update`, `delete`) are queued to one writer thread
///   the store owns. It takes everything queued, applies it in one
///   transaction (one fsync for many jobs: group commit), then calls each
///   write's `done`, in submission order, after `COMMIT` returned. A write
///   refused on its own (an id that exists, a job that does not) is checked
///   before it touches the database and fails alone; an I/O-class failure
///   rolls the transaction back and fails the writes in it, and the rest of
///   the batch goes on in a new one. Only the writer thread ever touches
///   the writer's connection.
/// - Reads are synchronous on the calling thread, through a small pool of
///   read-only connections (WAL readers never block the writer).
///
/// Files: the parent directory is created 0700 if missing, the database
/// 0600 (SQLite creates `-wal` with the database's mode; there is no `-shm`).
public final class SQLiteStore: JobStore {
    /// `PRAGMA user_version` of the schema below.
    static let schemaVersion = 3
    /// Idle read connections kept open; busier moments open more, briefly.
    static let maxIdleReaders = 4
    static let busyTimeoutMillis: Int32 = 5000

    public let path: String
    private let queue: WriteQueue
    private let readers: ReaderPool
    /// Job id -> rowid. Rows are appended in rowid order and found through
    /// this map: an index on the random ids would dirty a random page per
    /// insert, and the commits are what the 202s wait for.
    private let rows: RowMap
    private let writerThread: Mutex<pthread_t?>
    private let checkpointer: Checkpointer
    /// Held open with an exclusive flock(2) for the store's life: a second
    /// process on the same database would dispatch the same jobs.
    private let lock: Mutex<Int32>

    public init(path: String) throws(StoreError) {
        self.path = path
        try createParentDirectories(of: path)
        let lockFD = try createPrivateFile(path)
        guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno == EWOULDBLOCK ? "in use by another coatcheck process" : errnoText()
            _ = Glibc.close(lockFD)
            throw StoreError("sqlite: \(path) is \(reason)")
        }
        self.lock = Mutex(lockFD)
        var started = false
        var startedCheckpointer: Checkpointer?
        defer {
            if !started {
                startedCheckpointer?.stop()
                _ = Glibc.close(lockFD)
            }
        }

        let connection = try Connection(path: path, flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX)
        try connection.configureForWriting()
        // Checkpoints (copying the WAL into the database, and its fsync) run
        // on a thread of their own, so commits, which 202s wait for, never
        // stall behind one.
        let checkpointer = try Checkpointer(path: path)
        startedCheckpointer = checkpointer
        checkpointer.watch(connection)
        self.checkpointer = checkpointer
        let queue = WriteQueue()
        let rows = RowMap()
        let writer = try Writer(connection: connection, queue: queue, rows: rows)
        self.rows = rows
        self.queue = queue
        self.readers = ReaderPool(path: path)

        self.writerThread = Mutex(try startThread("writer") { writer.run() })
        started = true
    }

    deinit {
        close()
    }

    // MARK: Writes

    public func insert(_ record: JobRecord, request: JobRequest, done: @escaping @Sendable (StoreError?) -> Void) {
        submit(.insert(record, request), done)
    }

    public func update(_ record: JobRecord, response: JobResponse?, done: @escaping @Sendable (StoreError?) -> Void) {
        submit(.update(record, response), done)
    }

    public func delete(_ ids: [JobID], done: @escaping @Sendable (StoreError?) -> Void) {
        submit(.delete(ids), done)
    }

    private func submit(_ op: WriteOp, _ done: @escaping @Sendable (StoreError?) -> Void) {
        if !queue.enqueue(PendingWrite(op: op, done: done)) {
            done(StoreError("sqlite: the store is closed"))
        }
    }

    // MARK: Reads

    public func loadAll() throws(StoreError) -> [JobRecord] {
        try readers.with { reader throws(StoreError) in
            let s = reader.loadAll
            defer { s.reset() }
            var records: [JobRecord] = []
            var found: [JobID: Int64] = [:]
            while try s.step() {
                if let record = decodeRecord(s), let seq = s.int64(19) {
                    records.append(record)
                    found[record.id] = seq
                }
            }
            rows.merge(found)
            return records
        }
    }

    public func request(of id: JobID) throws(StoreError) -> JobRequest? {
        try readers.with { reader throws(StoreError) in
            guard let seq = rows[id] else { return nil }
            let s = reader.request
            defer { s.reset() }
            s.bind(seq, at: 1)
            guard try s.step() else { return nil }
            return JobRequest(
                head: s.blob(0) ?? [],
                body: decodeBody(s, blob: 1, path: 2, size: 3),
                declaresBody: (s.int64(4) ?? 0) != 0
            )
        }
    }

    public func response(of id: JobID) throws(StoreError) -> JobResponse? {
        try readers.with { reader throws(StoreError) in
            guard let seq = rows[id] else { return nil }
            let s = reader.response
            defer { s.reset() }
            s.bind(seq, at: 1)
            guard try s.step(), let status = s.int64(0) else { return nil }
            return JobResponse(
                status: Int(status),
                reason: s.blob(1) ?? [],
                headers: s.blob(2) ?? [],
                body: decodeBody(s, blob: 3, path: 4, size: 5)
            )
        }
    }

    /// False when the last transaction could not be committed, or when a
    /// read of the table fails (a read transaction on the table's root page).
    public func isHealthy() -> Bool {
        if queue.commitFailing.load(ordering: .relaxed) { return false }
        do {
            return try readers.with { reader throws(StoreError) in
                let s = reader.ping
                defer { s.reset() }
                _ = try s.step()
                return true
            }
        } catch {
            return false
        }
    }

    // MARK: Lifecycle

    /// Closes the idle readers, lets the writer commit what is queued, stops
    /// it and closes its connection. Idempotent; writes submitted afterwards
    /// fail at once. Called from a `done` callback (the writer thread), the
    /// writer finishes on its own after the current batch.
    public func close() {
        readers.close()
        queue.stop()
        let thread = writerThread.withLock { t -> pthread_t? in
            let running = t
            t = nil
            return running
        }
        guard let thread else { return }
        if pthread_equal(thread, pthread_self()) != 0 {
            pthread_detach(thread)
        } else {
            pthread_join(thread, nil)
        }
        checkpointer.stop()
        lock.withLock { fd in
            if fd >= 0 { _ = Glibc.close(fd) }
            fd = -1
        }
    }

    /// Transactions the writer committed so far (tests check the grouping).
    var committedTransactions: Int { queue.commits.load(ordering: .relaxed) }
}

// MARK: - Schema

private let createSchema = """
    BEGIN IMMEDIATE;
    CREATE TABLE IF NOT EXISTS jobs (
        seq               INTEGER PRIMARY KEY,
        id                TEXT NOT NULL,
        status            TEXT NOT NULL,
        upstream          TEXT NOT NULL,
        method            TEXT NOT NULL,
        path              TEXT NOT NULL,
        created_at        INTEGER NOT NULL,
        started_at        INTEGER,
        completed_at      INTEGER,
        attempts          INTEGER NOT NULL,
        resendable        INTEGER NOT NULL,
        credential        BLOB,
        idempotency_key   TEXT,
        fingerprint       BLOB,
        response_status   INTEGER,
        content_type      TEXT,
        response_size     INTEGER,
        error_code        TEXT,
        error_message     TEXT,
        req_head          BLOB NOT NULL,
        req_body          BLOB,
        req_body_path     TEXT,
        req_body_size     INTEGER NOT NULL,
        req_declares_body INTEGER NOT NULL,
        resp_status       INTEGER,
        resp_reason       BLOB,
        resp_headers      BLOB,
        resp_body         BLOB,
        resp_body_path    TEXT,
        resp_body_size    INTEGER,
        route             TEXT NOT NULL DEFAULT ''
    );
    PRAGMA user_version = \(SQLiteStore.schemaVersion);
    COMMIT;
    """

/// Version 2 had no route column: its jobs keep an empty label.
private let migrateFrom2 = """
    BEGIN IMMEDIATE;
    ALTER TABLE jobs ADD COLUMN route TEXT NOT NULL DEFAULT '';
    PRAGMA user_version = \(SQLiteStore.schemaVersion);
    COMMIT;
    """

private let recordColumns = """
    id, status, upstream, method, path, created_at, started_at, completed_at, attempts, resendable, \
    credential, idempotency_key, fingerprint, response_status, content_type, response_size, error_code, error_message, \
    route
    """

private let insertSQL = """
    INSERT INTO jobs (\(recordColumns), \
    req_head, req_body, req_body_path, req_body_size, req_declares_body) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)
    """

/// The mutable part of a record; the rest never changes after insert.
private let updateStateSQL = """
    UPDATE jobs SET status = ?2, started_at = ?3, completed_at = ?4, attempts = ?5, response_status = ?6, \
    content_type = ?7, response_size = ?8, error_code = ?9, error_message = ?10 WHERE seq = ?1
    """

private let setResponseSQL = """
    UPDATE jobs SET resp_status = ?2, resp_reason = ?3, resp_headers = ?4, resp_body = ?5, \
    resp_body_path = ?6, resp_body_size = ?7 WHERE seq = ?1
    """

private let selectFilesSQL = "SELECT req_body_path, resp_body_path FROM jobs WHERE seq = ?1"
private let deleteSQL = "DELETE FROM jobs WHERE seq = ?1"
/// The record's columns, then (column 19) the rowid.
private let loadAllSQL = "SELECT \(recordColumns), seq FROM jobs ORDER BY seq"
private let requestSQL = "SELECT req_head, req_body, req_body_path, req_body_size, req_declares_body FROM jobs WHERE seq = ?1"
private let responseSQL = """
    SELECT resp_status, resp_reason, resp_headers, resp_body, resp_body_path, resp_body_size FROM jobs WHERE seq = ?1
    """

/// A row of `loadAllSQL`, or nil when it cannot be decoded (skipped).
private func decodeRecord(_ s: Statement) -> JobRecord? {
    guard let idText = s.text(0), let id = JobID(idText),
          let statusText = s.text(1), let status = JobStatus(rawValue: statusText),
          let upstream = s.text(2), let method = s.text(3), let path = s.text(4),
          let createdAt = s.int64(5), let attempts = s.int64(8), let resendable = s.int64(9)
    else { return nil }
    var error: JobErrorCode?
    if let code = s.text(16) {
        guard let known = JobErrorCode(rawValue: code) else { return nil }
        error = known
    }
    var record = JobRecord(
        id: id, status: status, upstream: upstream, route: s.text(18) ?? "", method: method, path: path,
        createdAt: createdAt, startedAt: s.int64(6), completedAt: s.int64(7), attempts: Int(attempts),
        resendable: resendable != 0, credential: s.blob(10), idempotencyKey: s.text(11), fingerprint: s.blob(12)
    )
    record.responseStatus = s.int64(13).map { Int($0) }
    record.contentType = s.text(14)
    record.responseSize = s.int64(15)
    record.error = error
    record.errorMessage = s.text(17)
    return record
}

private func decodeBody(_ s: Statement, blob: Int32, path: Int32, size: Int32) -> StoredBody {
    if let file = s.text(path) {
        return .file(path: file, size: s.int64(size) ?? 0)
    }
    return .inline(s.blob(blob) ?? [])
}

private func bindBody(_ body: StoredBody, _ s: Statement, blob: Int32, path: Int32, size: Int32) {
    switch body {
    case .inline(let bytes):
        s.bind(bytes, at: blob)
        s.bind(nil as String?, at: path)
        s.bind(Int64(bytes.count), at: size)
    case .file(let file, let length):
        s.bind(nil as [UInt8]?, at: blob)
        s.bind(file, at: path)
        s.bind(length, at: size)
    }
}

// MARK: - The writer

private enum WriteOp: Sendable {
    case insert(JobRecord, JobRequest)
    case update(JobRecord, JobResponse?)
    case delete([JobID])
}

/// A class: the queue and the writer pass one reference around instead of
/// copying a record, a request and a closure at every step.
private final class PendingWrite: Sendable {
    let op: WriteOp
    let done: @Sendable (StoreError?) -> Void

    init(op: WriteOp, done: @escaping @Sendable (StoreError?) -> Void) {
        self.op = op
        self.done = done
    }
}

/// The hand-off between submitting threads and the writer thread. The
/// semaphore is posted when the queue turns non-empty (and on stop); the
/// writer takes the whole queue after each wake-up, so no write is missed.
private final class WriteQueue: Sendable {
    struct State {
        var pending: [PendingWrite] = []
        var stopping = false
    }

    private let state = Mutex(State())
    private let wakeup = Semaphore()
    let commits = Atomic<Int>(0)
    /// Set while BEGIN or COMMIT fail (a full disk, I/O errors).
    let commitFailing = Atomic<Bool>(false)

    /// False once the store is closing: the caller answers `done` itself.
    func enqueue(_ write: PendingWrite) -> Bool {
        let (accepted, wake) = state.withLock { s -> (Bool, Bool) in
            if s.stopping { return (false, false) }
            s.pending.append(write)
            return (true, s.pending.count == 1)
        }
        if wake { wakeup.signal() }
        return accepted
    }

    func stop() {
        let wake = state.withLock { s -> Bool in
            if s.stopping { return false }
            s.stopping = true
            return true
        }
        if wake { wakeup.signal() }
    }

    /// Blocks until there is work or a stop; returns everything queued.
    func next() -> (writes: [PendingWrite], stop: Bool) {
        wakeup.wait()
        return state.withLock { s in
            let writes = s.pending
            s.pending = []
            return (writes, s.stopping)
        }
    }
}

/// The writer thread's state: its connection and prepared statements. Made
/// on the opening thread, then used by the writer thread only.
private final class Writer {
    let connection: Connection
    let queue: WriteQueue
    let begin, commit, rollback: Statement
    let insert, updateState, setResponse, selectFiles, deleteRow: Statement
    let rows: RowMap
    /// This batch's inserts and deletes, applied to `rows` once committed.
    private var inserted: [JobID: Int64] = [:]
    private var deleted: Set<JobID> = []
    /// Spool files this transaction's rows name: synced (with their
    /// directories) before COMMIT, so no durable row names a lost file.
    private var toSync: Set<String> = []

    init(connection: Connection, queue: WriteQueue, rows: RowMap) throws(StoreError) {
        self.connection = connection
        self.queue = queue
        self.rows = rows
        begin = try connection.prepare("BEGIN IMMEDIATE")
        commit = try connection.prepare("COMMIT")
        rollback = try connection.prepare("ROLLBACK")
        insert = try connection.prepare(insertSQL)
        updateState = try connection.prepare(updateStateSQL)
        setResponse = try connection.prepare(setResponseSQL)
        selectFiles = try connection.prepare(selectFilesSQL)
        deleteRow = try connection.prepare(deleteSQL)
    }

    func run() {
        while true {
            let (writes, stop) = queue.next()
            if !writes.isEmpty { process(writes) }
            if stop { break }
        }
        connection.close()
    }

    /// One transaction for the whole batch (a new one only if SQLite rolled
    /// the first back on its own, e.g. on a full disk); after COMMIT the
    /// spool files of committed deletes are unlinked, then the callbacks run
    /// in submission order.
    private func process(_ writes: [PendingWrite]) {
        // Emptied, not replaced: a steady load reuses the same storage.
        inserted.removeAll(keepingCapacity: true)
        deleted.removeAll(keepingCapacity: true)
        toSync = []
        var results = [StoreError?](repeating: nil, count: writes.count)
        var files = [[String]](repeating: [], count: writes.count)
        var i = 0
        while i < writes.count {
            let first = i
            do throws(StoreError) {
                try begin.run()
            } catch {
                queue.commitFailing.store(true, ordering: .relaxed)
                for j in i..<writes.count { results[j] = error }
                break
            }
            var lost: StoreError?
            while i < writes.count {
                let (outcome, transactionLost) = applyOne(writes[i].op)
                switch outcome {
                case .success(let paths): files[i] = paths
                case .failure(let error): results[i] = error
                }
                i += 1
                if transactionLost, case .failure(let error) = outcome {
                    lost = error
                    break
                }
            }
            if let lost {
                queue.commitFailing.store(true, ordering: .relaxed)
                if !connection.isAutocommit { try? rollback.run() }
                for j in first..<(i - 1) where results[j] == nil {
                    results[j] = StoreError("sqlite: transaction rolled back: \(lost.message)")
                }
                // Their row changes went with the transaction.
                for j in first..<i { forgetRows(of: writes[j].op) }
                continue
            }
            do throws(StoreError) {
                try syncSpoolFiles()
                try commit.run()
                queue.commits.add(1, ordering: .relaxed)
                queue.commitFailing.store(false, ordering: .relaxed)
            } catch {
                queue.commitFailing.store(true, ordering: .relaxed)
                if !connection.isAutocommit { try? rollback.run() }
                for j in first..<i where results[j] == nil { results[j] = error }
                for j in first..<i { forgetRows(of: writes[j].op) }
            }
        }
        // What is left of this batch's row changes was committed (those of
        // failed writes were forgotten with their transaction).
        rows.apply(inserted: inserted, deleted: deleted)
        for (paths, result) in zip(files, results) where result == nil {
            for path in paths { removeSpoolFile(path) }
        }
        // Many callbacks hand work to the same loops: wake each loop once.
        EventLoop.deferringWakeups {
            for i in writes.indices {
                writes[i].done(results[i])
            }
        }
    }

    /// Applies one write. A write refused before any statement runs (an
    /// id that exists, a job that does not) fails alone; any other failure
    /// is an I/O-class error that loses the transaction.
    private func applyOne(_ op: WriteOp) -> (Result<[String], StoreError>, transactionLost: Bool) {
        do throws(StoreError) {
            switch try apply(op) {
            case .applied(let paths): return (.success(paths), false)
            case .refused(let refusal): return (.failure(refusal), false)
            }
        } catch {
            return (.failure(error), true)
        }
    }

    private enum Applied {
        /// With the spool files to unlink once committed.
        case applied([String])
        /// Checked before any statement ran: the transaction is unharmed.
        case refused(StoreError)
    }

    private func apply(_ op: WriteOp) throws(StoreError) -> Applied {
        switch op {
        case .insert(let record, let request):
            guard seq(of: record.id) == nil else { return .refused(StoreError("sqlite: job \(record.id) exists")) }
            let s = insert
            s.bind(record.id, at: 1)
            s.bind(record.status.rawValue, at: 2)
            s.bind(record.upstream, at: 3)
            s.bind(record.method, at: 4)
            s.bind(record.path, at: 5)
            s.bind(record.createdAt, at: 6)
            s.bind(record.startedAt, at: 7)
            s.bind(record.completedAt, at: 8)
            s.bind(Int64(record.attempts), at: 9)
            s.bind(Int64(record.resendable ? 1 : 0), at: 10)
            s.bind(record.credential, at: 11)
            s.bind(record.idempotencyKey, at: 12)
            s.bind(record.fingerprint, at: 13)
            s.bind(record.responseStatus.map { Int64($0) }, at: 14)
            s.bind(record.contentType, at: 15)
            s.bind(record.responseSize, at: 16)
            s.bind(record.error?.rawValue, at: 17)
            s.bind(record.errorMessage, at: 18)
            s.bind(record.route, at: 19)
            s.bind(request.head, at: 20)
            bindBody(request.body, s, blob: 21, path: 22, size: 23)
            s.bind(Int64(request.declaresBody ? 1 : 0), at: 24)
            try s.run()
            if let path = request.body.filePath { toSync.insert(path) }
            inserted[record.id] = connection.lastInsertRowID
            return .applied([])

        case .update(let record, let response):
            guard let seq = seq(of: record.id) else { return .refused(StoreError("sqlite: no such job")) }
            let s = updateState
            s.bind(seq, at: 1)
            s.bind(record.status.rawValue, at: 2)
            s.bind(record.startedAt, at: 3)
            s.bind(record.completedAt, at: 4)
            s.bind(Int64(record.attempts), at: 5)
            s.bind(record.responseStatus.map { Int64($0) }, at: 6)
            s.bind(record.contentType, at: 7)
            s.bind(record.responseSize, at: 8)
            s.bind(record.error?.rawValue, at: 9)
            s.bind(record.errorMessage, at: 10)
            try s.run()
            guard connection.changes > 0 else { throw StoreError("sqlite: no such job") }
            if let response {
                let r = setResponse
                r.bind(seq, at: 1)
                r.bind(Int64(response.status), at: 2)
                r.bind(response.reason, at: 3)
                r.bind(response.headers, at: 4)
                bindBody(response.body, r, blob: 5, path: 6, size: 7)
                try r.run()
                if let path = response.body.filePath { toSync.insert(path) }
            }
            return .applied([])

        case .delete(let ids):
            var paths: [String] = []
            for id in ids {
                guard let seq = seq(of: id) else { continue }
                let s = selectFiles
                s.bind(seq, at: 1)
                do {
                    defer { s.reset() }
                    while try s.step() {
                        if let path = s.text(0) { paths.append(path) }
                        if let path = s.text(1) { paths.append(path) }
                    }
                }
                deleteRow.bind(seq, at: 1)
                try deleteRow.run()
                deleted.insert(id)
            }
            return .applied(paths)
        }
    }

    private func syncSpoolFiles() throws(StoreError) {
        guard !toSync.isEmpty else { return }
        var directories: Set<String> = []
        for path in toSync {
            try fsyncPath(path)
            if let slash = path.lastIndex(of: "/") {
                directories.insert(slash == path.startIndex ? "/" : String(path[..<slash]))
            } else {
                directories.insert(".")
            }
        }
        for directory in directories { try fsyncPath(directory) }
        toSync = []
    }

    private func forgetRows(of op: WriteOp) {
        switch op {
        case .insert(let record, _): inserted[record.id] = nil
        case .delete(let ids): for id in ids { deleted.remove(id) }
        case .update: break
        }
    }

    /// The job's row, counting this batch's inserts and deletes so far.
    private func seq(of id: JobID) -> Int64? {
        if deleted.contains(id) { return nil }
        return inserted[id] ?? rows[id]
    }
}

// MARK: - Readers

/// A read-only connection and its statements; used by one thread at a
/// time, handed between threads only through `ReaderPool`'s lock.
private final class ReadConnection: @unchecked Sendable {
    let connection: Connection
    let loadAll, request, response, ping: Statement

    init(path: String) throws(StoreError) {
        connection = try Connection(path: path, flags: SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX)
        loadAll = try connection.prepare(loadAllSQL)
        request = try connection.prepare(requestSQL)
        response = try connection.prepare(responseSQL)
        ping = try connection.prepare("SELECT 1 FROM jobs LIMIT 1")
    }
}

private final class ReaderPool: Sendable {
    struct State {
        var idle: [ReadConnection] = []
        var closed = false
    }

    let path: String
    private let state = Mutex(State())

    init(path: String) { self.path = path }

    /// Runs `body` on a connection of its own: an idle one, or a new one.
    /// A connection that saw an error is closed rather than kept.
    func with<T>(_ body: (ReadConnection) throws(StoreError) -> T) throws(StoreError) -> T {
        let idle = try state.withLock { s throws(StoreError) -> ReadConnection? in
            if s.closed { throw StoreError("sqlite: the store is closed") }
            return s.idle.popLast()
        }
        let reader: ReadConnection
        if let idle { reader = idle } else { reader = try ReadConnection(path: path) }
        let result: T
        do throws(StoreError) {
            result = try body(reader)
        } catch {
            reader.connection.close()
            throw error
        }
        let keep = state.withLock { s -> Bool in
            guard !s.closed, s.idle.count < SQLiteStore.maxIdleReaders else { return false }
            s.idle.append(reader)
            return true
        }
        if !keep { reader.connection.close() }
        return result
    }

    /// Closes the idle connections; busy ones close when they come back.
    func close() {
        let idle = state.withLock { s -> [ReadConnection] in
            s.closed = true
            let all = s.idle
            s.idle = []
            return all
        }
        for reader in idle { reader.connection.close() }
    }
}

// MARK: - Connections and statements

/// Owns one `sqlite3*`, and finalizes the statements it prepared before
/// closing it. Not thread-safe (opened with NOMUTEX): one thread at a time.
private final class Connection {
    private var db: OpaquePointer?
    private var statements: [Statement] = []

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

    /// Rows changed by the last INSERT, UPDATE or DELETE.
    var lastInsertRowID: Int64 {
        guard let db else { return 0 }
        return sqlite3_last_insert_rowid(db)
    }

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

    /// Runs SQL text without results (schema, pragmas).
    /// sqlite3_wal_hook: called after each commit with the WAL's frame count.
    func setWALHook(_ context: UnsafeMutableRawPointer,
                    _ hook: @convention(c) (UnsafeMutableRawPointer?, OpaquePointer?, UnsafePointer<CChar>?, Int32) -> Int32) {
        guard let db else { return }
        _ = sqlite3_wal_hook(db, hook, context)
    }

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
                try execute(version == 0 ? createSchema : migrateFrom2)
            } catch {
                if !isAutocommit { try? execute("ROLLBACK") }
                throw error
            }
        }
    }

    /// Finalizes the statements, then closes. Idempotent.
    func close() {
        for statement in statements { statement.finalize() }
        statements = []
        if let db {
            sqlite3_close_v2(db)
            self.db = nil
        }
    }
}

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
private final class Statement {
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

// MARK: - Files and threads

/// What a new thread runs, carried through pthread_create's context pointer.
private final class ThreadStart {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Runs `body` on a new thread; the thread holds what `body` captures
/// until it returns.
private func startThread(_ name: String, _ body: @escaping () -> Void) throws(StoreError) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadStart(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        Unmanaged<ThreadStart>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<ThreadStart>.fromOpaque(box).release()
        throw StoreError("sqlite: cannot start the \(name) thread: \(String(cString: strerror(rc)))")
    }
    return thread
}

/// Runs `PASSIVE` checkpoints on its own thread and connection when the
/// writer's commits have grown the WAL past `threshold` frames (reported by
/// SQLite's WAL hook, which replaces the automatic checkpoints the writer
/// would otherwise run inside COMMIT).
private final class Checkpointer: @unchecked Sendable {
    static let threshold: Int32 = 1000

    private let connection: Connection
    private let wakeup = Semaphore()
    /// A checkpoint was asked for and has not started yet.
    private let requested = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<pthread_t?>(nil)

    init(path: String) throws(StoreError) {
        connection = try Connection(path: path, flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX)
        try connection.execute("PRAGMA busy_timeout=\(SQLiteStore.busyTimeoutMillis)")
        let t = try startThread("checkpoint") { [self] in run() }
        thread.withLock { $0 = t }
    }

    /// Installs the WAL hook on the writer's connection.
    func watch(_ writer: Connection) {
        writer.setWALHook(Unmanaged.passUnretained(self).toOpaque()) { ctx, _, _, frames in
            if frames >= Checkpointer.threshold {
                Unmanaged<Checkpointer>.fromOpaque(ctx!).takeUnretainedValue().request()
            }
            return SQLITE_OK
        }
    }

    private func request() {
        if !requested.exchange(true, ordering: .acquiringAndReleasing) { wakeup.signal() }
    }

    private func run() {
        while true {
            wakeup.wait()
            if stopping.load(ordering: .acquiring) { break }
            requested.store(false, ordering: .releasing)
            try? connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        }
        connection.close()
    }

    /// Ends the thread (after a checkpoint under way). Idempotent.
    func stop() {
        guard let t = thread.withLock({ t -> pthread_t? in
            defer { t = nil }
            return t
        }) else { return }
        stopping.store(true, ordering: .releasing)
        wakeup.signal()
        pthread_join(t, nil)
    }
}

/// A counting semaphore for the threads' wake-ups.
private final class Semaphore: @unchecked Sendable {
    private let sem: UnsafeMutablePointer<sem_t>

    init() {
        sem = .allocate(capacity: 1)
        sem_init(sem, 0, 0)
    }

    deinit {
        sem_destroy(sem)
        sem.deallocate()
    }

    func signal() { sem_post(sem) }

    func wait() {
        while sem_wait(sem) != 0 && errno == EINTR {}
    }
}

private func errnoText() -> String { String(cString: strerror(errno)) }

/// `mkdir -p` of the database's directory; directories it makes are 0700.
private func createParentDirectories(of path: String) throws(StoreError) {
    var components = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    components.removeLast()
    var current = path.hasPrefix("/") ? "" : "."
    for component in components where !component.isEmpty {
        current += "/" + component
        if mkdir(current, 0o700) == 0 {
            chmod(current, 0o700)
        } else if errno != EEXIST {
            throw StoreError("sqlite: cannot create directory \(current): \(errnoText())")
        }
    }
}

/// Creates the database file 0600 (whatever the umask) before SQLite opens
/// it, so it never exists with wider permissions; an existing database is
/// narrowed to 0600 too, since it holds request headers. Returns the open
/// descriptor (the caller locks it).
private func createPrivateFile(_ path: String) throws(StoreError) -> Int32 {
    let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw StoreError("sqlite: cannot create \(path): \(errnoText())") }
    var keep = false
    defer { if !keep { _ = Glibc.close(fd) } }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw StoreError("sqlite: cannot stat \(path): \(errnoText())") }
    if info.st_mode & 0o7777 != 0o600 && fchmod(fd, 0o600) != 0 {
        throw StoreError("sqlite: cannot chmod \(path) to 0600: \(errnoText())")
    }
    keep = true
    return fd
}

/// Job id -> rowid, shared by the writer (which changes it after commits)
/// and the readers.
private final class RowMap: Sendable {
    private let map = Mutex(JobIDMap<Int64>())

    subscript(id: JobID) -> Int64? { map.withLock { $0[id] } }
    func merge(_ found: [JobID: Int64]) { map.withLock { m in for (id, seq) in found { m[id] = seq } } }
    /// A committed batch's inserts and deletes, under one lock.
    func apply(inserted: [JobID: Int64], deleted: Set<JobID>) {
        guard !inserted.isEmpty || !deleted.isEmpty else { return }
        map.withLock { m in
            for (id, seq) in inserted { m[id] = seq }
            for id in deleted { m[id] = nil }
        }
    }
}

/// fsync(2) of a file or directory by path.
private func fsyncPath(_ path: String) throws(StoreError) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw StoreError("sqlite: cannot open \(path) to sync it: \(errnoText())") }
    defer { _ = Glibc.close(fd) }
    guard fsync(fd) == 0 else { throw StoreError("sqlite: cannot sync \(path): \(errnoText())") }
}
