public import Meters
import Loop
import CSQLite
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
public final class SQLiteStore: LocalJobStore {
    /// `PRAGMA user_version` of the schema (`createSchema`, SQLiteSchema.swift).
    static let schemaVersion = 4
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
    private let writerThread: Mutex<StartedThread?>
    /// Held open with an exclusive flock(2) for the store's life: a second
    /// process on the same database would dispatch the same jobs.
    private let lock: Mutex<Int32>

    /// `deferredDelay`: how long an `updateDeferred` write waits for a
    /// commit to share before it is committed on its own.
    public init(path: String, deferredDelay: Duration = .milliseconds(10)) throws(StoreError) {
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
        defer {
            if !started { _ = Glibc.close(lockFD) }
        }

        let connection = try Connection(path: path, flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX)
        try connection.configureForWriting()
        // Checkpoints (copying the WAL into the database, and its fsync) run
        // on a thread of their own, so commits, which 202s wait for, never
        // stall behind one. The writer's connection owns it from here, so
        // it stops when that connection closes (also when this init fails).
        let checkpointer = try Checkpointer(path: path)
        checkpointer.watch(connection)
        let queue = WriteQueue(deferredDelay: deferredDelay)
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

    public func updateDeferred(_ record: JobRecord, done: @escaping @Sendable (StoreError?) -> Void) {
        submit(.update(record, nil), deferred: true, done)
    }

    public func delete(_ ids: [JobID], done: @escaping @Sendable (StoreError?) -> Void) {
        submit(.delete(ids), done)
    }

    private func submit(_ op: WriteOp, deferred: Bool = false, _ done: @escaping @Sendable (StoreError?) -> Void) {
        if !queue.enqueue(PendingWrite(op: op, done: done), deferred: deferred) {
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
                if let record = decodeRecord(s), let seq = s.int64(25) {
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
    public var meters: MeterTable? { queue.meters }

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
    /// it and closes its connection (which stops the checkpointer).
    /// Idempotent; writes submitted afterwards fail at once. Called from a
    /// `done` callback (the writer thread), the writer finishes on its own
    /// after the current batch.
    public func close() {
        readers.close()
        queue.stop()
        let thread = writerThread.withLock { t -> StartedThread? in
            let running = t
            t = nil
            return running
        }
        guard let thread else { return }
        if thread.isCurrent {
            thread.detach()
        } else {
            thread.join()
        }
        lock.withLock { fd in
            if fd >= 0 { _ = Glibc.close(fd) }
            fd = -1
        }
    }

    /// Transactions the writer committed so far (tests check the grouping).
    var committedTransactions: Int { queue.commits.load(ordering: .relaxed) }

    /// Tests: the writer's next COMMIT fails, its transaction still open,
    /// so the writer must roll it back. Arm it between batches (the writer
    /// idle, or held in a `done` callback).
    func failNextCommit() { queue.failNextCommit.store(true, ordering: .relaxed) }
}
