import Meters
import Loop
import Synchronization

enum WriteOp: Sendable {
    case insert(JobRecord, JobRequest)
    case update(JobRecord, JobResponse?)
    case delete([JobID])
}

/// A class: the queue and the writer pass one reference around instead of
/// copying a record, a request and a closure at every step.
final class PendingWrite: Sendable {
    let op: WriteOp
    let done: @Sendable (StoreError?) -> Void

    init(op: WriteOp, done: @escaping @Sendable (StoreError?) -> Void) {
        self.op = op
        self.done = done
    }
}

/// The hand-off between submitting threads and the writer thread. A
/// write that must be durable before it is answered wakes the writer when
/// it is the first such write queued; a deferred one (a change whose loss
/// in a crash only repeats work) does not: it goes with the next commit, or
/// on its own once it has waited `deferredDelay`, or when `deferredLimit` of them
/// queue up. The writer takes the whole queue each time, so no write is
/// missed.
final class WriteQueue: Sendable {
    struct State {
        var pending: [PendingWrite] = []
        /// A write that is not deferred is queued: the writer was woken for it.
        var urgent = false
        /// When the oldest deferred write still queued came (`monotonicNanos`).
        var deferredSince: UInt64?
        var stopping = false
    }

    /// How long a deferred write may wait for a commit to go with (10 ms by default).
    let deferredDelay: UInt64
    static let deferredLimit = 256

    init(deferredDelay: Duration) {
        self.deferredDelay = UInt64(deferredDelay.nanoseconds)
    }

    private let state = Mutex(State())
    private let wakeup = Wakeup()
    let commits = Atomic<Int>(0)
    /// `store_commit_duration_seconds`: written by the writer thread only.
    let meters = MeterTable(capacity: 64)
    /// Set while BEGIN or COMMIT fail (a full disk, I/O errors).
    let commitFailing = Atomic<Bool>(false)
    /// Tests only (`SQLiteStore.failNextCommit`): the writer's next COMMIT
    /// fails before it runs, its transaction still open, as a COMMIT that
    /// cannot write the WAL does. Cleared when it fires.
    let failNextCommit = Atomic<Bool>(false)

    /// False once the store is closing: the caller answers `done` itself.
    func enqueue(_ write: PendingWrite, deferred: Bool = false) -> Bool {
        let (accepted, wake) = state.withLock { s -> (Bool, Bool) in
            if s.stopping { return (false, false) }
            s.pending.append(write)
            if !deferred {
                defer { s.urgent = true }
                return (true, !s.urgent)
            }
            if s.urgent { return (true, false) }
            if s.deferredSince == nil {
                // The writer may be waiting with no deadline: it sets one.
                s.deferredSince = monotonicNanos()
                return (true, true)
            }
            return (true, s.pending.count == Self.deferredLimit)
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

    /// Blocks until there is work that is due, or a stop; returns
    /// everything queued.
    func next() -> (writes: [PendingWrite], stop: Bool) {
        var deadline: UInt64?
        while true {
            wakeup.wait(until: deadline)
            let taken = state.withLock { s -> (writes: [PendingWrite], stop: Bool)? in
                if !s.stopping && !s.urgent {
                    guard let since = s.deferredSince else {
                        deadline = nil
                        return nil
                    }
                    if s.pending.count < Self.deferredLimit && monotonicNanos() &- since < deferredDelay {
                        deadline = since &+ deferredDelay
                        return nil
                    }
                }
                let writes = s.pending
                s.pending = []
                s.urgent = false
                s.deferredSince = nil
                return (writes, s.stopping)
            }
            if let taken { return taken }
        }
    }
}

/// The writer thread's state: its connection and prepared statements. Made
/// on the opening thread, then used by the writer thread only.
final class Writer {
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
            let began = monotonicNanos()
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
                // One relaxed load a transaction when unarmed.
                if queue.failNextCommit.load(ordering: .relaxed) {
                    queue.failNextCommit.store(false, ordering: .relaxed)
                    throw StoreError("sqlite: injected commit failure")
                }
                try commit.run()
                queue.meters.observe(.storeCommit, slot: StoreKind.sqlite.rawValue, .storeCommit,
                                     nanos: monotonicNanos() &- began)
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
            bindCallback(record.callback, s, from: 25)
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
            bindCallback(record.callback, s, from: 11)
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
