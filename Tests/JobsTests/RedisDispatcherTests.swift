import Foundation
import Jobs
import Loop
import Store
import TestSupport
import Testing

/// What every fake exchange of a test shares: who is in flight now, the
/// most ever at once, and each job's attempts by replica.
private final class Ledger: Sendable {
    struct State {
        var inFlight = 0
        var peak = 0
        var done: Set<JobID> = []
        var attempts: [(id: JobID, attempt: Int, replica: String, at: ContinuousClock.Instant)] = []
    }
    let state = Box(State())
}

/// A replica: its loop, store and dispatcher, and exchanges that take
/// `exchangeTime` (or never end, `hang`) and then write their result.
private final class FakeReplica: ClaimRunner, @unchecked Sendable {
    // Everything but `group`/`store`/`ledger` is touched on the loop only.
    let group = EventLoopGroup(count: 1)
    let store: RedisJobStore
    let name: String
    let ledger: Ledger
    let exchangeTime: Duration
    let hang: Bool
    var dispatcher: RedisDispatcher?
    var timers: [JobID: Loop.Timer] = [:]
    let aborted = Box<[JobID]>([])
    var loop: EventLoop { group.loops[0] }

    init(_ server: RedisServer, name: String, ledger: Ledger, limit: Int, lease: Duration = .seconds(1),
         exchangeTime: Duration = .milliseconds(20), hang: Bool = false) throws {
        self.name = name
        self.ledger = ledger
        self.exchangeTime = exchangeTime
        self.hang = hang
        group.start()
        store = RedisJobStore(settings: .init(endpoint: RedisEndpoint(host: "127.0.0.1", port: server.port), prefix: "cc",
                                              lease: lease, resultTTL: .seconds(60)),
                              loops: group.loops, replica: name)
        store.start()
        guard waitUntil(timeout: 5, { self.store.isHealthy }) else { throw TestError("redis not ready") }
        try loop.submitAndWait {
            let d = RedisDispatcher(loop: self.loop, store: self.store, upstreams: [("u", limit)], runner: self,
                                    pollInterval: .milliseconds(100))
            self.dispatcher = d
            d.start()
        }
    }

    /// As a `kill -9` leaves it to the others: no more claims, no renewals, no ends.
    func die() {
        try? loop.submitAndWait {
            self.dispatcher?.stop()
            self.dispatcher = nil
            self.timers = [:]
        }
        store.close()
        group.shutdown()
    }

    func run(_ claim: RedisJobStore.Claim, for dispatcher: RedisDispatcher) {
        let id = claim.record.id
        ledger.state.withLock { s in
            s.inFlight += 1
            s.peak = max(s.peak, s.inFlight)
            s.attempts.append((id, claim.record.attempts, name, .now))
        }
        guard !hang else { return }
        let timer = Loop.Timer(loop: loop) { [unowned self] in
            self.timers[id] = nil
            self.ledger.state.withLock { $0.inFlight -= 1 }
            var r = claim.record
            r.responseStatus = 200
            let ended = r
            let response = JobResponse(status: 200, reason: Array("OK".utf8), headers: [], body: .empty)
            self.store.finish(ended, .completed(response, body: []), now: wallClockMillis(), on: self.loop) { result in
                if case .success(.written) = result { self.ledger.state.withLock { _ = $0.done.insert(id) } }
                dispatcher.ended(id, upstream: "u")
            }
        }
        timers[id] = timer
        timer.schedule(after: exchangeTime)
    }

    func abort(_ id: JobID, claimLost: Bool) {
        aborted.withLock { $0.append(id) }
    }

    func create(_ n: Int, method: String = "PUT") throws -> [JobID] {
        let ids = (0..<n).map { _ in JobID.random() }
        let created = Box(0)
        loop.execute {
            for id in ids {
                let r = JobRecord(id: id, status: .queued, upstream: "u", route: "r", method: method, path: "/",
                                  createdAt: wallClockMillis(), resendable: method != "POST")
                let request = JobRequest(head: Array("\(method) / HTTP/1.1\r\n".utf8), body: .empty, declaresBody: false)
                self.store.create(r, request: request, body: [], keyIndex: nil, on: self.loop) { result in
                    if case .success(.created) = result { created.withLock { $0 += 1 } }
                }
                self.dispatcher?.wake("u")
            }
        }
        guard created.wait(timeout: 10, until: { $0 == n }) else { throw TestError("jobs not created") }
        return ids
    }
}

@Suite(.serialized) struct RedisDispatcherTests {
    /// SPEC §5b: `max_concurrency` across the replicas together.
    @Test func twoReplicasNeverRunMoreThanTheLimitTogether() throws {
        let server = try RedisServer()
        let ledger = Ledger()
        let a = try FakeReplica(server, name: "a", ledger: ledger, limit: 3)
        let b = try FakeReplica(server, name: "b", ledger: ledger, limit: 3)
        defer { a.die(); b.die() }
        var ids = try a.create(30)
        ids += try b.create(30)
        #expect(ledger.state.wait(timeout: 20) { $0.done.count == 60 })
        let s = ledger.state.withLock { $0 }
        #expect(s.peak <= 3, "peak \(s.peak)")
        #expect(s.peak == 3)
        #expect(Set(s.done) == Set(ids))
        // Each job sent once, by one replica.
        #expect(s.attempts.count == 60)
        #expect(Set(s.attempts.map(\.id)).count == 60)
    }

    /// A replica dies during a long idempotent job: the other takes it over
    /// once, after the lease and not before, as attempt 2; a POST is
    /// failed `interrupted` instead.
    @Test func aDeadReplicasJobIsTakenOverAfterTheLease() throws {
        let server = try RedisServer()
        let ledger = Ledger()
        let a = try FakeReplica(server, name: "a", ledger: ledger, limit: 4, lease: .seconds(1), hang: true)
        let put = try a.create(1, method: "PUT")[0]
        let post = try a.create(1, method: "POST")[0]
        #expect(ledger.state.wait(timeout: 5) { $0.attempts.count == 2 })
        // While a renews, b (started now) cannot take them, however long they run.
        let b = try FakeReplica(server, name: "b", ledger: ledger, limit: 4, lease: .seconds(1))
        defer { b.die() }
        // What must not happen has no signal: wait out two and a half leases.
        Thread.sleep(forTimeInterval: 2.5)
        #expect(ledger.state.withLock { $0.attempts.count } == 2)

        let killed = ContinuousClock.now
        a.die()
        #expect(ledger.state.wait(timeout: 5) { $0.done.contains(put) })
        let s = ledger.state.withLock { $0 }
        let takeover = try #require(s.attempts.first { $0.replica == "b" })
        #expect(takeover.id == put && takeover.attempt == 2)
        let waited = Double((takeover.at - killed).components.attoseconds) / 1e18 + Double((takeover.at - killed).components.seconds)
        // After the lease (less the third it had been renewed ahead), within a lease and a poll.
        #expect(waited >= 0.6 && waited < 1.6, "\(waited) s")
        #expect(s.attempts.filter { $0.id == put }.count == 2)
        let record = Box<JobRecord?>(nil)
        b.loop.execute { b.store.lookup(post, on: b.loop) { r in record.withLock { $0 = (try? r.get()) ?? nil } } }
        #expect(record.wait(timeout: 5) { $0 != nil })
        #expect(record.withLock { $0?.status } == .failed)
        #expect(record.withLock { $0?.error } == .interrupted)
    }
}
