import CSQLite
import Dispatch
import Loop
@testable import Store
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fresh directory under /tmp, removed with everything in it.
private struct TempDir: ~Copyable {
    let path: String

    init() { path = makeTempDirectory(prefix: "coatcheck-sqlite") }

    deinit { removeTree(path) }

    var db: String { path + "/jobs.db" }
}

private func mode(of path: String) -> mode_t? {
    var info = stat()
    guard stat(path, &info) == 0 else { return nil }
    return info.st_mode & 0o7777
}

private func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

private func writeFile(_ path: String, _ bytes: [UInt8]) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    precondition(fd >= 0)
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

private func record(_ id: JobID = .random(), status: JobStatus = .queued, key: String? = nil) -> JobRecord {
    JobRecord(id: id, status: status, upstream: "backend", route: "reports", method: "POST", path: "/reports?x=1",
              createdAt: 1_764_410_400_000, resendable: key != nil,
              credential: [1, 2, 3, 0, 255], idempotencyKey: key, fingerprint: Array(repeating: 7, count: 32))
}

private let head = Array("POST /reports?x=1 HTTP/1.1\r\nHost: example\r\nAuthorization: Bearer s3cret\r\n".utf8)

/// Waits for the store's callbacks; counts each one.
private final class Callbacks: Sendable {
    private let results = Mutex<[StoreError?]>([])
    private let semaphore = DispatchSemaphore(value: 0)

    var done: @Sendable (StoreError?) -> Void {
        { [self] error in
            results.withLock { $0.append(error) }
            semaphore.signal()
        }
    }

    /// The results of the next `count` callbacks (fails after 5 s).
    func wait(_ count: Int = 1) -> [StoreError?] {
        for _ in 0..<count {
            if semaphore.wait(timeout: .now() + 5) == .timedOut {
                Issue.record("store callback timed out")
                break
            }
        }
        return results.withLock { r in
            let all = r
            r = []
            return all
        }
    }
}

/// Synchronous writes for the tests.
private extension SQLiteStore {
    func insertSync(_ record: JobRecord, _ request: JobRequest) -> StoreError? {
        let c = Callbacks()
        insert(record, request: request, done: c.done)
        return c.wait().first ?? StoreError("no callback")
    }

    func updateSync(_ record: JobRecord, _ response: JobResponse?) -> StoreError? {
        let c = Callbacks()
        update(record, response: response, done: c.done)
        return c.wait().first ?? StoreError("no callback")
    }

    func deleteSync(_ ids: [JobID]) -> StoreError? {
        let c = Callbacks()
        delete(ids, done: c.done)
        return c.wait().first ?? StoreError("no callback")
    }
}

/// Raw SQL against a database file, behind the store's back.
private func rawExecute(_ path: String, _ sql: String) -> Bool {
    var db: OpaquePointer?
    guard sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, nil) == SQLITE_OK else {
        sqlite3_close_v2(db)
        return false
    }
    defer { sqlite3_close_v2(db) }
    return sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK
}

/// Submits what `submit` submits as one batch: the writer is held in the
/// `done` callback of a job it has just committed (returned) meanwhile.
private func inOneBatch(_ store: SQLiteStore, _ submit: () -> Void) -> JobRecord {
    let entered = DispatchSemaphore(value: 0)
    let gate = DispatchSemaphore(value: 0)
    let holder = record()
    store.insert(holder, request: JobRequest(head: head, body: .empty, declaresBody: false)) { _ in
        entered.signal()
        gate.wait()
    }
    #expect(entered.wait(timeout: .now() + 5) == .success)
    submit()
    gate.signal()
    return holder
}

@Suite struct SQLiteStoreTests {
    @Test func roundTripWithInlineBodies() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }
        #expect(store.isHealthy())

        var job = record(key: "k-1")
        let request = JobRequest(head: head, body: .inline(Array("{\"a\":1}".utf8)), declaresBody: true)
        #expect(store.insertSync(job, request) == nil)
        #expect(try store.loadAll() == [job])
        #expect(try store.request(of: job.id) == request)
        #expect(try store.response(of: job.id) == nil)

        job.status = .running
        job.startedAt = 1_764_410_401_000
        job.attempts = 1
        #expect(store.updateSync(job, nil) == nil)
        #expect(try store.loadAll() == [job])

        job.status = .completed
        job.completedAt = 1_764_410_402_000
        job.responseStatus = 201
        job.contentType = "application/json"
        job.responseSize = 2
        let response = JobResponse(status: 201, reason: Array("Created".utf8),
                                   headers: Array("Content-Type: application/json\r\n".utf8), body: .inline([0x7B, 0x7D]))
        #expect(store.updateSync(job, response) == nil)
        #expect(try store.loadAll() == [job])
        #expect(try store.response(of: job.id) == response)
        #expect(try store.request(of: job.id) == request)

        #expect(store.deleteSync([job.id]) == nil)
        #expect(try store.loadAll() == [])
        #expect(try store.request(of: job.id) == nil)
        #expect(try store.response(of: job.id) == nil)
    }

    /// Bound values are copied into a per-statement buffer while they fit
    /// and left to SQLite beyond it: values on both sides of that line, in
    /// one statement and across statements, come back exact.
    @Test func valuesLargerThanTheBindBufferRoundTrip() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }

        func bytes(_ count: Int, _ seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) ^ seed } }
        var jobs: [JobRecord] = []
        var requests: [JobRequest] = []
        for (n, size) in [100, 5_000, 9_000, 20_000].enumerated() {
            let job = JobRecord(id: .random(), status: .queued, upstream: "backend", method: "POST",
                                path: "/" + String(repeating: "p", count: size / 2), createdAt: 1_764_410_400_000,
                                resendable: true, credential: bytes(size / 20, 9),
                                idempotencyKey: String(repeating: "k", count: size / 10), fingerprint: bytes(32, 4))
            let request = JobRequest(head: bytes(size, UInt8(n)), body: .inline(bytes(size + 7, UInt8(n + 100))),
                                     declaresBody: true)
            #expect(store.insertSync(job, request) == nil)
            jobs.append(job)
            requests.append(request)
        }
        #expect(try store.loadAll() == jobs)
        for (job, request) in zip(jobs, requests) {
            #expect(try store.request(of: job.id) == request)
        }

        var job = jobs[2]
        job.status = .completed
        job.completedAt = 1_764_410_402_000
        job.errorMessage = String(repeating: "m", count: 3_000)
        let response = JobResponse(status: 200, reason: bytes(7_000, 1), headers: bytes(12_000, 2),
                                   body: .inline(bytes(4_000, 3)))
        #expect(store.updateSync(job, response) == nil)
        #expect(try store.response(of: job.id) == response)
        #expect(try store.loadAll().first { $0.id == job.id } == job)
    }

    @Test func emptyBodiesAndOptionalsRoundTrip() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }

        var bare = JobRecord(id: .random(), status: .queued, upstream: "", method: "GET", path: "/",
                             createdAt: 5, resendable: true)
        let request = JobRequest(head: [], body: .empty, declaresBody: false)
        #expect(store.insertSync(bare, request) == nil)
        #expect(try store.loadAll() == [bare])
        #expect(try store.request(of: bare.id) == request)

        bare.status = .failed
        bare.error = .upstreamTimeout
        bare.errorMessage = "no response in 30s"
        let empty = JobResponse(status: 204, reason: [], headers: [], body: .empty)
        #expect(store.updateSync(bare, empty) == nil)
        #expect(try store.loadAll() == [bare])
        #expect(try store.response(of: bare.id) == empty)
    }

    @Test func fileBodiesRoundTripAndDeleteUnlinksThem() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }

        let requestFile = dir.path + "/req.body"
        let responseFile = dir.path + "/resp.body"
        writeFile(requestFile, Array(repeating: 1, count: 100))
        writeFile(responseFile, Array(repeating: 2, count: 300))

        var job = record()
        let request = JobRequest(head: head, body: .file(path: requestFile, size: 100), declaresBody: true)
        #expect(store.insertSync(job, request) == nil)
        #expect(try store.request(of: job.id) == request)

        job.status = .completed
        let response = JobResponse(status: 200, reason: Array("OK".utf8), headers: [],
                                   body: .file(path: responseFile, size: 300))
        #expect(store.updateSync(job, response) == nil)
        #expect(try store.response(of: job.id) == response)

        let other = record()
        #expect(store.insertSync(other, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)

        #expect(exists(requestFile) && exists(responseFile))
        #expect(store.deleteSync([job.id, JobID.random()]) == nil)
        #expect(!exists(requestFile))
        #expect(!exists(responseFile))
        #expect(try store.loadAll() == [other])
    }

    @Test func updateWithoutResponseKeepsTheResponse() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }

        var job = record()
        #expect(store.insertSync(job, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
        job.status = .completed
        let response = JobResponse(status: 200, reason: Array("OK".utf8), headers: Array("X: y\r\n".utf8),
                                   body: .inline([1, 2, 3]))
        #expect(store.updateSync(job, response) == nil)

        job.attempts = 3
        #expect(store.updateSync(job, nil) == nil)
        #expect(try store.response(of: job.id) == response)
        #expect(try store.loadAll().first?.attempts == 3)

        // An update of a job the store does not have is an error.
        #expect(store.updateSync(record(), nil) != nil)
    }

    @Test func filesArePrivate() throws {
        let dir = TempDir()
        let path = dir.path + "/a/b/jobs.db"
        let store = try SQLiteStore(path: path)
        #expect(store.insertSync(record(), JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
        #expect(mode(of: dir.path + "/a") == 0o700)
        #expect(mode(of: dir.path + "/a/b") == 0o700)
        #expect(mode(of: path) == 0o600)
        #expect(mode(of: path + "-wal") == 0o600)
        // The WAL index is in the process's heap (unix-excl): no -shm file.
        #expect(mode(of: path + "-shm") == nil)
        store.close()

        // An existing database with wider permissions is narrowed.
        #expect(chmod(path, 0o644) == 0)
        let reopened = try SQLiteStore(path: path)
        defer { reopened.close() }
        #expect(mode(of: path) == 0o600)
        #expect(try reopened.loadAll().count == 1)
    }

    @Test func dataSurvivesCloseAndReopen() throws {
        let dir = TempDir()
        var job = record(key: "again")
        let request = JobRequest(head: head, body: .inline([9, 8, 7]), declaresBody: true)
        let response = JobResponse(status: 500, reason: Array("Internal Server Error".utf8), headers: [],
                                   body: .inline(Array("boom".utf8)))
        do {
            let store = try SQLiteStore(path: dir.db)
            #expect(store.insertSync(job, request) == nil)
            job.status = .completed
            job.responseStatus = 500
            #expect(store.updateSync(job, response) == nil)
            store.close()
            store.close()  // idempotent
        }
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }
        #expect(try store.loadAll() == [job])
        #expect(try store.request(of: job.id) == request)
        #expect(try store.response(of: job.id) == response)
    }

    /// Commits do not checkpoint (a 202 would wait for it): a thread of the
    /// store copies the WAL into the database once it has grown.
    @Test func theWALIsCheckpointedInTheBackground() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }
        func size(_ path: String) -> Int {
            var info = stat()
            return stat(path, &info) == 0 ? Int(info.st_size) : 0
        }
        let before = size(dir.db)
        // ~1,500 pages of rows: past the 1,000-frame threshold.
        let big = JobRequest(head: head, body: .inline([UInt8](repeating: 7, count: 3000)), declaresBody: true)
        for _ in 0..<1500 {
            #expect(store.insertSync(record(), big) == nil)
        }
        // The store's own thread writes the file, and nothing signals it: poll.
        waitUntil(timeout: 5) { size(dir.db) > before + 1_000_000 }
        #expect(size(dir.db) > before + 1_000_000, "the database file took the WAL's pages")
        #expect(try store.loadAll().count == 1500)
    }

    @Test func oneProcessPerDatabase() throws {
        let dir = TempDir()
        let first = try SQLiteStore(path: dir.db)
        #expect(throws: StoreError.self) { try SQLiteStore(path: dir.db) }
        first.close()
        let second = try SQLiteStore(path: dir.db)
        second.close()
    }

    @Test func closedStoreRefusesWork() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        store.close()
        #expect(!store.isHealthy())
        #expect(throws: StoreError.self) { try store.loadAll() }
        #expect(store.insertSync(record(), JobRequest(head: [], body: .empty, declaresBody: false)) != nil)
    }

    @Test func concurrentInsertsAreAllCommittedOnce() throws {
        let dir = TempDir()
        let threads = 8, perThread = 200
        let ids = (0..<threads * perThread).map { _ in JobID.random() }
        let calls = Mutex<[Int]>(Array(repeating: 0, count: ids.count))
        let failures = Mutex<[StoreError]>([])
        let finished = DispatchSemaphore(value: 0)
        let remaining = Atomic<Int>(ids.count)

        let store = try SQLiteStore(path: dir.db)
        _ = try onThreads(threads) { t in
            for k in 0..<perThread {
                let n = t * perThread + k
                let request = JobRequest(head: head, body: .inline(Array("\(n)".utf8)), declaresBody: true)
                store.insert(record(ids[n]), request: request) { error in
                    calls.withLock { $0[n] += 1 }
                    if let error { failures.withLock { $0.append(error) } }
                    if remaining.subtract(1, ordering: .relaxed).newValue == 0 { finished.signal() }
                }
            }
        }
        #expect(finished.wait(timeout: .now() + 10) == .success)
        let commits = store.committedTransactions
        store.close()  // a duplicate callback would have run by now

        #expect(failures.withLock { $0 }.isEmpty)
        #expect(calls.withLock { $0 }.allSatisfy { $0 == 1 })
        #expect(commits >= 1 && commits <= ids.count)

        let reopened = try SQLiteStore(path: dir.db)
        defer { reopened.close() }
        let loaded = try reopened.loadAll()
        #expect(loaded.count == ids.count)
        #expect(Set(loaded.map(\.id)) == Set(ids))
        #expect(try reopened.request(of: ids[1234])?.body == .inline(Array("1234".utf8)))
    }

    /// Writes queued while the writer is busy share one transaction, and a
    /// failing write in that batch fails alone.
    @Test func queuedWritesShareOneCommit() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }
        let entered = DispatchSemaphore(value: 0)
        let gate = DispatchSemaphore(value: 0)

        // The writer runs callbacks on its thread: hold it in one.
        let first = record()
        let request = JobRequest(head: head, body: .empty, declaresBody: false)
        store.insert(first, request: request) { _ in
            entered.signal()
            gate.wait()
        }
        #expect(entered.wait(timeout: .now() + 5) == .success)
        let before = store.committedTransactions

        let c = Callbacks()
        let batch = (0..<50).map { _ in record() }
        for job in batch[..<25] { store.insert(job, request: request, done: c.done) }
        store.insert(first, request: request, done: c.done)  // duplicate id: fails alone
        store.update(record(), response: nil, done: c.done)  // unknown job: fails alone
        for job in batch[25...] { store.insert(job, request: request, done: c.done) }
        gate.signal()

        let results = c.wait(52)
        #expect(results.count == 52)
        #expect(results.enumerated().allSatisfy { i, error in (i == 25 || i == 26) == (error != nil) })
        #expect(store.committedTransactions == before + 1)
        #expect(try store.loadAll().count == 51)
    }

    /// A deferred write (a delivery attempt's outcome) does not commit on
    /// its own while it may wait: it goes with the next write that must be
    /// durable, in one transaction, and in order.
    @Test func aDeferredWriteGoesWithTheNextCommit() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db, deferredDelay: .seconds(3600))
        defer { store.close() }
        var job = record(status: .completed)
        #expect(store.insertSync(job, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
        let before = store.committedTransactions

        let deferred = Callbacks()
        job.callback = JobCallback(url: "https://hooks.example/done", status: .delivered, attempts: 1, round: 1)
        store.updateDeferred(job, done: deferred.done)
        let other = record()
        #expect(store.insertSync(other, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
        // The insert's callback ran after the whole batch committed, so the
        // deferred write's did too (callbacks run in submission order).
        #expect(deferred.wait() == [nil])
        #expect(store.committedTransactions == before + 1)
        #expect(try store.loadAll().first { $0.id == job.id }?.callback?.status == .delivered)
    }

    /// With nothing else to go with, a deferred write is committed once it
    /// has waited its delay.
    @Test func aDeferredWriteAloneIsCommittedAfterItsDelay() throws {
        let dir = TempDir()
        let store = try SQLiteStore(path: dir.db, deferredDelay: .milliseconds(20))
        defer { store.close() }
        var job = record(status: .failed)
        #expect(store.insertSync(job, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
        let before = store.committedTransactions
        let started = monotonicNanos()
        let c = Callbacks()
        job.callback = JobCallback(url: "https://hooks.example/done", status: .failed, attempts: 3, round: 1,
                                   lastError: "http_410")
        store.updateDeferred(job, done: c.done)
        #expect(c.wait() == [nil])
        #expect(monotonicNanos() - started >= 20_000_000)
        #expect(store.committedTransactions == before + 1)
        #expect(try store.loadAll().first { $0.id == job.id }?.callback?.lastError == "http_410")
    }

    /// Many deferred writes commit without waiting out their delay; a store
    /// closed with deferred writes queued commits them first.
    @Test func deferredWritesCommitWhenManyOrOnClose() throws {
        let dir = TempDir()
        let request = JobRequest(head: head, body: .empty, declaresBody: false)
        var jobs = (0..<(WriteQueue.deferredLimit + 1)).map { _ in record(status: .completed) }
        do {
            let store = try SQLiteStore(path: dir.db, deferredDelay: .seconds(3600))
            let inserted = Callbacks()
            for job in jobs { store.insert(job, request: request, done: inserted.done) }
            #expect(inserted.wait(jobs.count).allSatisfy { $0 == nil })
            let c = Callbacks()
            for i in jobs.indices {
                jobs[i].callback = JobCallback(url: "https://hooks.example/\(i)", status: .delivered, attempts: 1, round: 1)
            }
            for job in jobs[..<WriteQueue.deferredLimit] { store.updateDeferred(job, done: c.done) }
            #expect(c.wait(WriteQueue.deferredLimit).allSatisfy { $0 == nil })
            store.updateDeferred(jobs[WriteQueue.deferredLimit], done: c.done)
            store.close()
            #expect(c.wait() == [nil])
        }
        let reopened = try SQLiteStore(path: dir.db)
        defer { reopened.close() }
        #expect(try reopened.loadAll().allSatisfy { $0.callback?.status == .delivered })
    }

    /// Databases of earlier schemas open and keep their jobs: version 2 had
    /// no route column (its jobs keep an empty label) and neither it nor
    /// version 3 had callbacks. New jobs are stored whole, callback included.
    @Test(arguments: [2, 3]) func anOlderDatabaseIsMigrated(version: Int) throws {
        let dir = TempDir()
        let old = record()
        do {
            let store = try SQLiteStore(path: dir.db)
            #expect(store.insertSync(old, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
            store.close()
        }
        let callbackColumns = ["callback_url", "callback_status", "callback_attempts", "callback_round",
                               "callback_error", "callback_next_at"]
        let dropped = (version < 3 ? ["route"] : []) + callbackColumns
        let downgrade = dropped.map { "ALTER TABLE jobs DROP COLUMN \($0);" }.joined() + " PRAGMA user_version = \(version)"
        #expect(rawExecute(dir.db, downgrade))
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }
        let loaded = try store.loadAll()
        #expect(loaded.map(\.id) == [old.id])
        #expect(loaded.first?.route == (version < 3 ? "" : old.route))
        #expect(loaded.first?.callback == nil)
        var new = record()
        new.callback = JobCallback(url: "https://hooks.example.com/x", status: .pending, attempts: 2,
                                   lastError: "http_500", nextAttemptAt: 1_700_000_000_000)
        #expect(store.insertSync(new, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
        #expect(try store.loadAll().last == new)
    }

    @Test func undecodableRowsAreSkipped() throws {
        let dir = TempDir()
        let good = record()
        do {
            let store = try SQLiteStore(path: dir.db)
            #expect(store.insertSync(good, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
            #expect(store.insertSync(record(), JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
            #expect(store.insertSync(record(), JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
            store.close()
        }
        #expect(rawExecute(dir.db, "UPDATE jobs SET id = 'not-an-id' WHERE id != '\(good.id.text)' AND rowid = 2"))
        #expect(rawExecute(dir.db, "UPDATE jobs SET status = 'bogus' WHERE id != '\(good.id.text)' AND rowid = 3"))
        let store = try SQLiteStore(path: dir.db)
        defer { store.close() }
        #expect(try store.loadAll() == [good])
    }

    // MARK: Failed writes

    /// A batch whose COMMIT fails: every write in it gets an error, none of
    /// it is applied (inserts, an update, a delete), and the job -> row map
    /// forgets it too: a later job that takes a rolled-back rowid is not
    /// found under a failed job's id.
    @Test func aFailedCommitFailsEveryWriteOfItsBatch() throws {
        let dir = TempDir()
        let kept = record(), gone = record()
        let request = JobRequest(head: head, body: .inline([1, 2, 3]), declaresBody: true)
        let store = try SQLiteStore(path: dir.db)
        #expect(store.insertSync(kept, request) == nil)
        #expect(store.insertSync(gone, request) == nil)

        var started = kept
        started.status = .running
        started.startedAt = 1_764_410_401_000
        started.attempts = 1
        let fresh = (0..<5).map { _ in record() }
        let c = Callbacks()
        var before = 0
        let holder = inOneBatch(store) {
            before = store.committedTransactions
            store.failNextCommit()
            for job in fresh { store.insert(job, request: request, done: c.done) }
            store.update(started, response: nil, done: c.done)
            store.delete([gone.id], done: c.done)
        }
        let results = c.wait(7)
        #expect(results.count == 7)
        #expect(results.allSatisfy { $0?.message.contains("injected commit failure") == true })
        #expect(store.committedTransactions == before)
        #expect(!store.isHealthy())
        let durable = [kept, gone, holder]
        #expect(try store.loadAll() == durable)
        #expect(try store.request(of: gone.id) == request)
        #expect(try store.request(of: fresh[0].id) == nil)

        // The store goes on; its next job takes the first failed job's rowid.
        let next = record()
        let nextRequest = JobRequest(head: head, body: .inline([4, 5, 6]), declaresBody: true)
        #expect(store.insertSync(next, nextRequest) == nil)
        #expect(store.isHealthy())
        #expect(try store.request(of: fresh[0].id) == nil)
        #expect(try store.request(of: next.id) == nextRequest)
        store.close()

        let reopened = try SQLiteStore(path: dir.db)
        defer { reopened.close() }
        #expect(try reopened.loadAll() == durable + [next])
        #expect(try reopened.request(of: fresh[0].id) == nil)
    }

    /// After a failed commit the same writes, submitted again, commit as one
    /// batch and survive a reopen: nothing of the failed batch is left to
    /// refuse them (an id "that exists") or to stand in for their rows.
    @Test func theBatchAfterAFailedCommitCommitsAndSurvivesReopen() throws {
        let dir = TempDir()
        let kept = record(), gone = record()
        let store = try SQLiteStore(path: dir.db)
        #expect(store.insertSync(kept, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)
        #expect(store.insertSync(gone, JobRequest(head: head, body: .empty, declaresBody: false)) == nil)

        var started = kept
        started.status = .running
        started.startedAt = 1_764_410_401_000
        started.attempts = 1
        let fresh = (0..<5).map { _ in record() }
        let requests = fresh.indices.map { JobRequest(head: head, body: .inline(Array("\($0)".utf8)), declaresBody: true) }
        func submitAll(_ c: Callbacks) {
            for (job, request) in zip(fresh, requests) { store.insert(job, request: request, done: c.done) }
            store.update(started, response: nil, done: c.done)
            store.delete([gone.id], done: c.done)
        }

        let failed = Callbacks()
        let firstHolder = inOneBatch(store) {
            store.failNextCommit()
            submitAll(failed)
        }
        let failures = failed.wait(7)
        #expect(failures.count == 7 && failures.allSatisfy { $0 != nil })

        let retried = Callbacks()
        var before = 0
        let secondHolder = inOneBatch(store) {
            before = store.committedTransactions
            submitAll(retried)
        }
        let results = retried.wait(7)
        #expect(results.count == 7 && results.allSatisfy { $0 == nil })
        #expect(store.committedTransactions == before + 1)
        #expect(store.isHealthy())
        let expected = [started, firstHolder, secondHolder] + fresh
        #expect(try store.loadAll() == expected)
        for (job, request) in zip(fresh, requests) {
            #expect(try store.request(of: job.id) == request)
        }
        store.close()

        let reopened = try SQLiteStore(path: dir.db)
        defer { reopened.close() }
        #expect(try reopened.loadAll() == expected)
        for (job, request) in zip(fresh, requests) {
            #expect(try reopened.request(of: job.id) == request)
        }
        #expect(try reopened.request(of: gone.id) == nil)
    }

    /// An update whose second statement fails (its response, after its
    /// state was written) rolls its transaction back: it and the write
    /// before it in that transaction fail, the job keeps its previous
    /// durable state, and the rest of the batch commits in a new one.
    @Test func aFailedUpdateKeepsThePreviousDurableState() throws {
        let dir = TempDir()
        let request = JobRequest(head: head, body: .empty, declaresBody: false)
        var job = record(), other = record()
        do {
            let store = try SQLiteStore(path: dir.db)
            #expect(store.insertSync(job, request) == nil)
            job.status = .running
            job.startedAt = 1_764_410_401_000
            job.attempts = 1
            #expect(store.updateSync(job, nil) == nil)
            #expect(store.insertSync(other, request) == nil)
            store.close()
        }
        // Behind the store's back: a response with status 599 cannot be stored.
        #expect(rawExecute(dir.db, """
            CREATE TRIGGER refuse_599 BEFORE UPDATE OF resp_status ON jobs WHEN NEW.resp_status = 599
            BEGIN SELECT RAISE(ABORT, 'injected: response refused'); END
            """))

        let store = try SQLiteStore(path: dir.db)
        #expect(try store.loadAll() == [job, other])  // as at startup: the store learns its rows
        var completed = job
        completed.status = .completed
        completed.completedAt = 1_764_410_402_000
        completed.responseStatus = 599
        let response = JobResponse(status: 599, reason: Array("Refused".utf8), headers: [], body: .inline([1]))
        let earlier = record()
        other.status = .running
        other.attempts = 1
        let c = Callbacks()
        let holder = inOneBatch(store) {
            store.insert(earlier, request: request, done: c.done)
            store.update(completed, response: response, done: c.done)
            store.update(other, response: nil, done: c.done)
        }
        let results = c.wait(3)
        #expect(results.count == 3)
        #expect(results.first??.message.contains("rolled back") == true)
        #expect(results.dropFirst().first??.message.contains("injected: response refused") == true)
        #expect(results.last == .some(nil))
        #expect(store.isHealthy())
        let durable = [job, other, holder]
        #expect(try store.loadAll() == durable)
        #expect(try store.response(of: job.id) == nil)
        #expect(try store.request(of: earlier.id) == nil)
        store.close()

        let reopened = try SQLiteStore(path: dir.db)
        defer { reopened.close() }
        #expect(try reopened.loadAll() == durable)
        #expect(try reopened.response(of: job.id) == nil)
    }

    /// A failing INSERT mid-batch: the inserts before it in its transaction
    /// are rolled back and fail, those after it commit in a new one, and
    /// the rolled-back jobs leave nothing behind (they can be inserted
    /// again; their rowids, taken by later jobs, are not theirs).
    @Test func aFailedInsertRollsBackTheInsertsBeforeIt() throws {
        let dir = TempDir()
        try SQLiteStore(path: dir.db).close()
        // Behind the store's back: a job with this idempotency key cannot be stored.
        #expect(rawExecute(dir.db, """
            CREATE TRIGGER refuse_key BEFORE INSERT ON jobs WHEN NEW.idempotency_key = 'refuse'
            BEGIN SELECT RAISE(ABORT, 'injected: insert refused'); END
            """))

        let store = try SQLiteStore(path: dir.db)
        let jobs = (0..<4).map { _ in record() }
        let requests = jobs.indices.map { JobRequest(head: head, body: .inline(Array("\($0)".utf8)), declaresBody: true) }
        let c = Callbacks()
        let holder = inOneBatch(store) {
            store.insert(jobs[0], request: requests[0], done: c.done)
            store.insert(jobs[1], request: requests[1], done: c.done)
            store.insert(record(key: "refuse"), request: requests[0], done: c.done)
            store.insert(jobs[2], request: requests[2], done: c.done)
            store.insert(jobs[3], request: requests[3], done: c.done)
        }
        let results = c.wait(5)
        #expect(results.count == 5)
        #expect(results.prefix(2).allSatisfy { $0?.message.contains("rolled back") == true })
        #expect(results.dropFirst(2).first??.message.contains("injected: insert refused") == true)
        #expect(results.suffix(2).allSatisfy { $0 == nil })
        #expect(store.isHealthy())
        #expect(try store.loadAll() == [holder, jobs[2], jobs[3]])
        #expect(try store.request(of: jobs[0].id) == nil)
        #expect(try store.request(of: jobs[2].id) == requests[2])

        #expect(store.insertSync(jobs[0], requests[0]) == nil)
        #expect(store.insertSync(jobs[1], requests[1]) == nil)
        store.close()

        let reopened = try SQLiteStore(path: dir.db)
        defer { reopened.close() }
        #expect(try reopened.loadAll() == [holder, jobs[2], jobs[3], jobs[0], jobs[1]])
        for (job, request) in zip(jobs, requests) {
            #expect(try reopened.request(of: job.id) == request)
        }
    }
}
