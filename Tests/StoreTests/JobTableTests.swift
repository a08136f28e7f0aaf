import Store
import Loop
import Synchronization
import TestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A store whose writes become durable only when the test says so, to see
/// what clients are shown in between.
final class HeldStore: JobStore {
    private let inner = MemoryStore()
    private let held = Mutex<[@Sendable () -> Void]>([])

    var pending: Int { held.withLock { $0.count } }

    /// Completes every held write, in order.
    func release() {
        let ops = held.withLock { h -> [@Sendable () -> Void] in
            defer { h.removeAll() }
            return h
        }
        for op in ops { op() }
    }

    func loadAll() throws(StoreError) -> [JobRecord] { try inner.loadAll() }
    func insert(_ record: JobRecord, request: JobRequest, done: @escaping @Sendable (StoreError?) -> Void) {
        held.withLock { $0.append { [inner] in inner.insert(record, request: request, done: done) } }
    }
    func update(_ record: JobRecord, response: JobResponse?, done: @escaping @Sendable (StoreError?) -> Void) {
        held.withLock { $0.append { [inner] in inner.update(record, response: response, done: done) } }
    }
    func delete(_ ids: [JobID], done: @escaping @Sendable (StoreError?) -> Void) {
        held.withLock { $0.append { [inner] in inner.delete(ids, done: done) } }
    }
    func request(of id: JobID, on loop: EventLoop,
                 _ done: @escaping @Sendable (Result<JobRequest?, StoreError>) -> Void) {
        inner.request(of: id, on: loop, done)
    }
    func response(of id: JobID, on loop: EventLoop,
                  _ done: @escaping @Sendable (Result<JobResponse?, StoreError>) -> Void) {
        inner.response(of: id, on: loop, done)
    }
    func isHealthy() -> Bool { true }
    func close() {}
}

private func record(_ status: JobStatus = .queued, key: String? = nil, fingerprint: [UInt8]? = nil,
                    createdAt: Int64 = 1_000) -> JobRecord {
    JobRecord(id: .random(), status: status, upstream: "app", method: "POST", path: "/x",
              createdAt: createdAt, resendable: false, idempotencyKey: key, fingerprint: fingerprint)
}

private let noRequest = JobRequest(head: Array("POST /x HTTP/1.1\r\n".utf8), body: .empty, declaresBody: false)

@Suite struct JobTableTests {
    @Test func newJobsAreVisibleOnlyOnceDurable() {
        let store = HeldStore()
        let table = JobTable(store: store)
        let r = record()
        let acknowledged = Count()
        table.insert(r, request: noRequest) { error in
            #expect(error == nil)
            acknowledged.add()
        }
        #expect(table.lookup(r.id) == nil)
        #expect(acknowledged.value == 0)
        store.release()
        #expect(acknowledged.value == 1)
        #expect(table.lookup(r.id)?.status == .queued)
    }

    /// Given a loop, the store's thread only hands the insert over: the
    /// entry is made and `done` runs on that loop, the job visible by then.
    @Test func anInsertForALoopFinishesOnThatLoop() {
        let store = HeldStore()
        let table = JobTable(store: store)
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        let loop = group.loops[0]
        let r = record()
        let seen = Box<(onLoop: Bool, visible: Bool)?>(nil)
        table.insert(r, request: noRequest, on: loop) { error in
            #expect(error == nil)
            seen.withLock { $0 = (loop.inEventLoop, table.lookup(r.id) != nil) }
        }
        store.release()
        #expect(seen.wait(timeout: 2) { $0 != nil })
        #expect(seen.withLock { $0?.onLoop } == true)
        #expect(seen.withLock { $0?.visible } == true)
    }

    @Test func transitionsShowOnlyWhatIsDurable() {
        let store = HeldStore()
        let table = JobTable(store: store)
        let r = record()
        table.insert(r, request: noRequest) { _ in }
        store.release()
        let moved = table.apply(.dispatched, to: r.id) { $0.attempts += 1; $0.startedAt = 2_000 }
        #expect(moved?.status == .running)
        #expect(moved?.attempts == 1)
        // Applied, not yet durable: clients still see the job queued.
        #expect(table.lookup(r.id)?.status == .queued)
        store.release()
        #expect(table.lookup(r.id)?.status == .running)
        #expect(table.lookup(r.id)?.startedAt == 2_000)
    }

    @Test func aCancelThatWonRefusesTheLateResult() {
        let table = JobTable(store: MemoryStore())
        let r = record()
        table.insert(r, request: noRequest) { _ in }
        table.apply(.dispatched, to: r.id)
        let aborted = Count()
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        #expect(table.setAbort(r.id, loop: group.loops[0]) { aborted.add() })
        #expect(table.cancel(r.id) { _ in }?.status == .canceled)
        #expect(table.apply(.responded, to: r.id) == nil)
        #expect(table.lookup(r.id)?.status == .canceled)
        #expect(aborted.wait(for: 1))
        // A job no longer running takes no abort hook.
        #expect(!table.setAbort(r.id, loop: group.loops[0]) {})
    }

    @Test func aQueuedJobsRequestIsKeptUntilItsDispatchOnly() {
        let table = JobTable(store: MemoryStore())
        let request = JobRequest(head: Array("POST /x HTTP/1.1\r\nA: b\r\n".utf8), body: .inline([1, 2, 3]), declaresBody: true)
        let first = record(), second = record(), third = record()
        for r in [first, second, third] { table.insert(r, request: request) { _ in } }
        let cost = table.cachedRequestBytes / 3
        #expect(cost > request.head.count + 3)
        // Handed over once; then the store is where it is.
        #expect(table.takeRequest(first.id) == request)
        #expect(table.takeRequest(first.id) == nil)
        #expect(table.cachedRequestBytes == 2 * cost)
        // A canceled job's and a removed job's kept requests are let go.
        #expect(table.cancel(second.id) { _ in } != nil)
        #expect(table.takeRequest(second.id) == nil)
        table.remove([third.id]) { _ in }
        #expect(table.cachedRequestBytes == 0)
        // Jobs that start running (auto) have their exchange already: nothing kept.
        table.insert(record(.running), request: request) { _ in }
        #expect(table.cachedRequestBytes == 0)
    }

    @Test func keptRequestsStayWithinTheirBudget() {
        let table = JobTable(store: MemoryStore())
        let big = JobRequest(head: [UInt8](repeating: 0x41, count: JobTable.requestCacheBytes / 2 - 200),
                             body: .empty, declaresBody: false)
        let jobs = [record(), record(), record()]
        for r in jobs { table.insert(r, request: big) { _ in } }
        #expect(table.cachedRequestBytes <= JobTable.requestCacheBytes)
        #expect(table.takeRequest(jobs[0].id) == big)
        #expect(table.takeRequest(jobs[1].id) == big)
        #expect(table.takeRequest(jobs[2].id) == nil)
    }

    @Test func failuresCarryTheirCodeAndMessage() {
        let table = JobTable(store: MemoryStore())
        let r = record()
        table.insert(r, request: noRequest) { _ in }
        table.apply(.dispatched, to: r.id)
        table.apply(.attemptFailed(.upstreamTimeout, retry: false), to: r.id)
        let failed = table.lookup(r.id)
        #expect(failed?.status == .failed)
        #expect(failed?.error == .upstreamTimeout)
        #expect(failed?.errorMessage == JobErrorCode.upstreamTimeout.defaultMessage)
    }

    @Test func longPollsWakeOnTheEndOnly() {
        let table = JobTable(store: MemoryStore())
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        let r = record()
        table.insert(r, request: noRequest) { _ in }
        let woken = Count()
        let token = table.wait(for: r.id, loop: group.loops[0]) { woken.add() }
        #expect(token != nil)
        table.apply(.dispatched, to: r.id)
        // Running is not an end: give a wrong wake-up the chance to show.
        let sentinel = Count()
        group.loops[0].execute { sentinel.add() }
        #expect(sentinel.wait(for: 1))
        #expect(woken.value == 0)
        table.apply(.responded, to: r.id)
        #expect(woken.wait(for: 1))
        // A terminal job takes no waiter.
        #expect(table.wait(for: r.id, loop: group.loops[0]) {} == nil)
    }

    @Test func aWaiterThatLeftIsNotWoken() {
        let table = JobTable(store: MemoryStore())
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        let r = record()
        table.insert(r, request: noRequest) { _ in }
        let woken = Count()
        let token = table.wait(for: r.id, loop: group.loops[0]) { woken.add() }!
        table.stopWaiting(r.id, token: token)
        table.apply(.cancel, to: r.id)
        let sentinel = Count()
        group.loops[0].execute { sentinel.add() }
        #expect(sentinel.wait(for: 1))
        #expect(woken.value == 0)
    }

    @Test func idempotencyKeysFindTheirJob() {
        let store = HeldStore()
        let table = JobTable(store: store)
        let fp: [UInt8] = [1, 2, 3]
        let k = JobRecord.keyIndex(key: "k", credential: nil)
        func claim(_ fingerprint: [UInt8], now: Int64 = 5_000) -> JobTable.KeyClaim {
            table.claim(key: k, fingerprint: fingerprint, now: now, ttl: .seconds(10))
        }
        #expect(claim(fp) == .claimed)
        // While the first request is being accepted, a second one waits its turn.
        #expect(claim(fp) == .inFlight)
        let r = record(key: "k", fingerprint: fp)
        table.insert(r, request: noRequest) { _ in }
        store.release()
        #expect(claim(fp) == .existing(r))
        #expect(claim([9]) == .mismatch)
        // Keys live as long as their job.
        table.remove([r.id]) { _ in }
        store.release()
        #expect(claim([9]) == .claimed)
        table.releaseClaim(key: k)
        #expect(claim(fp) == .claimed)
    }

    @Test func idempotencyKeysArePerCredentialAndExpireWithTheirJob() {
        let table = JobTable(store: MemoryStore())
        let alice: [UInt8] = [0xA1]
        let bob: [UInt8] = [0xB0]
        let aliceKey = JobRecord.keyIndex(key: "k", credential: alice)
        let bobKey = JobRecord.keyIndex(key: "k", credential: bob)
        #expect(aliceKey != bobKey)
        #expect(table.claim(key: aliceKey, fingerprint: [1], now: 0, ttl: .seconds(10)) == .claimed)
        var r = JobRecord(id: .random(), status: .queued, upstream: "app", method: "POST", path: "/x",
                          createdAt: 0, resendable: true, credential: alice, idempotencyKey: "k", fingerprint: [1])
        table.insert(r, request: noRequest) { _ in }
        // Bob's "k" is his own, whatever Alice did with hers.
        #expect(table.claim(key: bobKey, fingerprint: [2], now: 0, ttl: .seconds(10)) == .claimed)
        table.apply(.dispatched, to: r.id) { $0.startedAt = 0 }
        table.apply(.responded, to: r.id) { $0.completedAt = 1_000 }
        r = table.lookup(r.id)!
        #expect(table.claim(key: aliceKey, fingerprint: [1], now: 10_999, ttl: .seconds(10)) == .existing(r))
        // Past result_ttl the job is gone for clients, and so is its key.
        #expect(table.claim(key: aliceKey, fingerprint: [1], now: 11_000, ttl: .seconds(10)) == .claimed)
    }

    @Test func onlyFinishedJobsExpire() {
        let table = JobTable(store: MemoryStore())
        let pending = record()
        let done = record()
        table.insert(pending, request: noRequest) { _ in }
        table.insert(done, request: noRequest) { _ in }
        table.apply(.dispatched, to: done.id)
        table.apply(.responded, to: done.id) { $0.completedAt = 10_000 }
        #expect(table.expired(now: 10_999, ttl: .seconds(1)).isEmpty)
        #expect(table.expired(now: 11_000, ttl: .seconds(1)) == [done.id])
        table.remove([done.id]) { _ in }
        #expect(table.lookup(done.id) == nil)
        #expect(table.lookup(pending.id) != nil)
    }

    @Test func estimatesComeFromObservedDurations() {
        let table = JobTable(store: MemoryStore())
        let queued = record()
        table.insert(queued, request: noRequest) { _ in }
        #expect(table.estimatedCompletion(of: queued, ahead: 0, concurrency: 1, now: 5_000) == nil)
        let finished = record()
        table.insert(finished, request: noRequest) { _ in }
        table.apply(.dispatched, to: finished.id) { $0.startedAt = 1_000 }
        table.apply(.responded, to: finished.id) { $0.completedAt = 3_000 }
        // One observation of 2 s: a queued job with 3 ahead on 2 slots waits one round, then runs one.
        let estimate: Int64? = table.estimatedCompletion(of: queued, ahead: 3, concurrency: 2, now: 5_000)
        #expect(estimate == Int64(5_000 + 2 * 2_000))
        #expect(table.estimatedCompletion(of: queued, ahead: 0, concurrency: 2, now: 5_000) == 7_000)
        var running = queued
        running.status = .running
        running.startedAt = 4_500
        #expect(table.estimatedCompletion(of: running, ahead: 0, concurrency: 1, now: 5_000) == 6_500)
        #expect(table.estimatedCompletion(of: table.lookup(finished.id)!, ahead: 0, concurrency: 1, now: 5_000) == nil)
    }

    /// A fast route's (or method's) durations say nothing about a slow one.
    @Test func estimatesArePerRouteAndMethod() {
        let table = JobTable(store: MemoryStore())
        func job(_ route: String, _ method: String) -> JobRecord {
            JobRecord(id: .random(), status: .queued, upstream: "app", route: route, method: method, path: "/x",
                      createdAt: 1_000, resendable: false)
        }
        table.observe(.init(route: "/fast", method: "GET"), millis: 10)
        #expect(table.estimatedCompletion(of: job("/reports", "GET"), ahead: 0, concurrency: 1, now: 0) == nil)
        #expect(table.estimatedCompletion(of: job("/fast", "POST"), ahead: 0, concurrency: 1, now: 0) == nil)
        #expect(table.estimatedCompletion(of: job("/fast", "GET"), ahead: 0, concurrency: 1, now: 0) == 10)
        let report = job("/reports", "POST")
        table.insert(report, request: noRequest) { _ in }
        table.apply(.dispatched, to: report.id) { $0.startedAt = 2_000 }
        table.apply(.responded, to: report.id) { $0.completedAt = 3_000 }
        #expect(table.estimatedCompletion(of: job("/reports", "POST"), ahead: 4, concurrency: 2, now: 0) == 3_000)
        #expect(table.estimatedCompletion(of: job("/fast", "GET"), ahead: 0, concurrency: 1, now: 0) == 10)
    }
}

/// A count the callbacks under test bump and the test waits on.
final class Count: Sendable {
    private let n = Box(0)
    func add() { n.withLock { $0 += 1 } }
    var value: Int { n.withLock { $0 } }
    /// Waits (up to two seconds) for the count to reach `target`; true if it is exactly that.
    func wait(for target: Int) -> Bool {
        var seen = 0
        _ = n.wait(timeout: 2) { v in
            seen = v
            return v >= target
        }
        return seen == target
    }
}
