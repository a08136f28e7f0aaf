import Foundation
import Loop
import Store
import TestSupport
import Testing

/// One replica's store: its own loops and connections, its own replica name.
private final class Replica: @unchecked Sendable {
    let group = EventLoopGroup(count: 2)
    let store: RedisJobStore
    var loop: EventLoop { group.loops[0] }

    init(_ server: RedisServer, name: String, waitReplicas: Int = 0, timeout: Duration = .seconds(2)) {
        group.start()
        store = RedisJobStore(
            settings: .init(endpoint: endpoint(server), prefix: "cc", lease: .seconds(1), waitReplicas: waitReplicas,
                            resultTTL: .seconds(60), commandTimeout: timeout),
            loops: group.loops, replica: name)
        store.start()
    }

    deinit {
        store.close()
        group.shutdown()
    }

    /// Runs `body` on loop `index` and waits for what it hands to its continuation.
    func ask<T: Sendable>(on index: Int = 0, _ body: @escaping @Sendable (EventLoop, @escaping (T) -> Void) -> Void) -> T? {
        let box = Box<T?>(nil)
        let loop = group.loops[index]
        loop.execute { body(loop) { value in box.withLock { $0 = value } } }
        _ = box.wait(timeout: 10) { $0 != nil }
        return box.withLock { $0 }
    }
}

private func job(_ method: String = "PUT", key: String? = nil) -> JobRecord {
    JobRecord(id: .random(), status: .queued, upstream: "u", route: "r", method: method, path: "/p", createdAt: wallClockMillis(),
              resendable: method != "POST", idempotencyKey: key, fingerprint: key.map { _ in [1, 2, 3] })
}

private let request = JobRequest(head: Array("PUT /p HTTP/1.1\r\nX: y\r\n".utf8), body: .empty, declaresBody: true)

/// The Redis store as two replicas use it, against a real redis-server.
@Suite(.serialized) struct RedisJobStoreTests {
    @Test func aJobMadeOnOneReplicaIsRunAndReadOnTheOther() throws {
        let server = try RedisServer()
        let a = Replica(server, name: "a"), b = Replica(server, name: "b")
        #expect(waitUntil(timeout: 5) { a.store.isHealthy && b.store.isHealthy })
        let r = job()
        let created = a.ask { loop, done in a.store.create(r, request: request, body: [9, 8, 7], keyIndex: nil, on: loop) { done($0) } }
        #expect(try created?.get() == .created)
        // Read on the other replica, from either of its loops.
        #expect(try b.ask(on: 1) { loop, done in b.store.lookup(r.id, on: loop) { done($0) } }?.get() == r)

        let claimed = try b.ask { loop, done in b.store.claim(upstream: "u", limit: 4, now: wallClockMillis(), on: loop) { done($0) } }?.get()
        let claim = try #require(claimed?.claims.first)
        #expect(claim.record.id == r.id && claim.record.status == .running && claim.record.attempts == 1)
        #expect(claim.request == JobRequest(head: request.head, body: .inline([9, 8, 7]), declaresBody: true))
        // Replica a does not hold it: a renewal from a reports it lost.
        let renewedByA = try a.ask { loop, done in a.store.renew([r.id], upstream: "u", now: wallClockMillis(), on: loop) { done($0) } }?.get()
        #expect(renewedByA?.lost == [r.id])

        var record = claim.record
        record.responseStatus = 200
        record.responseSize = 2
        let ended = record
        let response = JobResponse(status: 200, reason: Array("OK".utf8), headers: Array("A: b\r\n".utf8), body: .empty)
        let finished = try b.ask { loop, done in
            b.store.finish(ended, .completed(response, body: Array("ok".utf8)), now: wallClockMillis(), on: loop) { done($0) }
        }?.get()
        #expect(finished == .written)
        let seen = try a.ask { loop, done in a.store.lookup(r.id, on: loop) { done($0) } }?.get()
        #expect(seen?.status == .completed && seen?.responseStatus == 200)
        let replay = try a.ask { loop, done in a.store.response(of: r.id, on: loop) { done($0) } }?.get()
        #expect(replay == JobResponse(status: 200, reason: Array("OK".utf8), headers: response.headers, body: .inline(Array("ok".utf8))))

        // DELETE of the ended job: gone for both.
        #expect(try a.ask { loop, done in a.store.remove(r.id, now: wallClockMillis(), on: loop) { done($0) } }?.get() == true)
        #expect(try b.ask { loop, done in b.store.lookup(r.id, on: loop) { done($0) } }?.get() == .some(nil))
    }

    @Test func anIdempotencyKeyFindsTheJobMadeOnAnotherReplica() throws {
        let server = try RedisServer()
        let a = Replica(server, name: "a"), b = Replica(server, name: "b")
        #expect(waitUntil(timeout: 5) { a.store.isHealthy && b.store.isHealthy })
        let first = job("POST", key: "k"), second = job("POST", key: "k")
        #expect(try a.ask { loop, done in a.store.create(first, request: request, body: [], keyIndex: " k", on: loop) { done($0) } }?.get() == .created)
        let again = try b.ask { loop, done in b.store.create(second, request: request, body: [], keyIndex: " k", on: loop) { done($0) } }?.get()
        #expect(again == .existing(first))
    }

    @Test func aCancelOnOneReplicaReachesTheExchangeOnTheOther() throws {
        let server = try RedisServer()
        let a = Replica(server, name: "a"), b = Replica(server, name: "b")
        #expect(waitUntil(timeout: 5) { a.store.isHealthy && b.store.isHealthy })
        let r = job()
        _ = a.ask { loop, done in a.store.create(r, request: request, body: [], keyIndex: nil, on: loop) { done($0) } }
        let claim = try #require(try a.ask { loop, done in a.store.claim(upstream: "u", limit: 1, now: wallClockMillis(), on: loop) { done($0) } }?.get().claims.first)
        #expect(try b.ask { loop, done in b.store.cancel(r, now: wallClockMillis(), on: loop) { done($0) } }?.get() == .running)
        #expect(try b.ask { loop, done in b.store.lookup(r.id, on: loop) { done($0) } }?.get()?.status == .canceled)
        let renewal = try a.ask { loop, done in a.store.renew([r.id], upstream: "u", now: wallClockMillis(), on: loop) { done($0) } }?.get()
        #expect(renewal?.canceled == [r.id])
        let finished = try a.ask { loop, done in a.store.finish(claim.record, .failed, now: wallClockMillis(), on: loop) { done($0) } }?.get()
        #expect(finished == .canceled)
    }

    /// `redis.wait_replicas` with no Redis replica to wait for: the 202
    /// cannot be promised, the caller hears why.
    @Test func waitReplicasRefusesWhatTooFewReplicasHave() throws {
        let server = try RedisServer()
        let a = Replica(server, name: "a", waitReplicas: 1, timeout: .milliseconds(600))
        #expect(waitUntil(timeout: 5) { a.store.isHealthy })
        let result = a.ask { loop, done in a.store.create(job(), request: request, body: [], keyIndex: nil, on: loop) { done($0) } }
        guard case .failure(let e)? = result else {
            Issue.record("created without the replica: \(String(describing: result))")
            return
        }
        #expect(e.reason == "0 of 1 Redis replicas acknowledged the job")
        #expect(a.store.isHealthy)
    }

    @Test func redisDownIsUnhealthyAndRefusesAtOnceThenComesBack() throws {
        let server = try RedisServer()
        let a = Replica(server, name: "a")
        #expect(waitUntil(timeout: 5) { a.store.isHealthy })
        server.kill()
        #expect(waitUntil(timeout: 5) {
            // Loss is noticed at the next command at the latest.
            _ = a.ask { loop, done in a.store.lookup(.random(), on: loop) { done($0.map { _ in 0 }) } }
            _ = a.ask(on: 1) { loop, done in a.store.lookup(.random(), on: loop) { done($0.map { _ in 0 }) } }
            return !a.store.isHealthy
        })
        let start = ContinuousClock.now
        let refused = a.ask { loop, done in a.store.create(job(), request: request, body: [], keyIndex: nil, on: loop) { done($0) } }
        guard case .failure? = refused else {
            Issue.record("created with Redis down")
            return
        }
        #expect(secondsSince(start) < 1)
        try server.start()
        #expect(waitUntil(timeout: 5) { a.store.isHealthy })
        #expect(try a.ask { loop, done in a.store.create(job(), request: request, body: [], keyIndex: nil, on: loop) { done($0) } }?.get() == .created)
    }
}

extension RedisJobStoreTests {
    /// Each delivery round is made by one replica; a dead replica's
    /// delivery is due again after its lease, for the other.
    @Test func aDeliveryIsHeldByOneReplicaAndTakenOverAfterItsLease() throws {
        let server = try RedisServer()
        let a = Replica(server, name: "a"), b = Replica(server, name: "b")
        #expect(waitUntil(timeout: 5) { a.store.isHealthy && b.store.isHealthy })
        let r = JobRecord(id: .random(), status: .queued, upstream: "u", route: "r", method: "PUT", path: "/p",
                          createdAt: 1_000, resendable: true, callback: JobCallback(url: "https://hooks.test/x"))
        _ = a.ask { loop, done in a.store.create(r, request: request, body: [], keyIndex: nil, on: loop) { done($0) } }
        let claim = try #require(try a.ask { loop, done in a.store.claim(upstream: "u", limit: 1, now: 1_000, on: loop) { done($0) } }?.get().claims.first)
        _ = a.ask { loop, done in a.store.finish(claim.record, .failed, now: 2_000, on: loop) { done($0) } }

        let taken = try a.ask { loop, done in a.store.claimDeliveries(max: 10, lease: .seconds(5), now: 2_000, on: loop) { done($0) } }?.get()
        #expect(taken?.map(\.id) == [r.id])
        #expect(taken?.first?.callback?.status == .pending)
        // Held: not due for b before the lease ends; due for b after it.
        #expect(try b.ask { loop, done in b.store.claimDeliveries(max: 10, lease: .seconds(5), now: 6_999, on: loop) { done($0) } }?.get() == [])
        let takenOver = try b.ask { loop, done in b.store.claimDeliveries(max: 10, lease: .seconds(5), now: 7_000, on: loop) { done($0) } }?.get()
        #expect(takenOver?.map(\.id) == [r.id])
        // a's late outcome is refused; b's is written.
        #expect(try a.ask { loop, done in a.store.finishDelivery(r.id, round: 1, .delivered, attempts: 1, lastError: nil, now: 7_100, on: loop) { done($0) } }?.get() == false)
        #expect(try b.ask { loop, done in b.store.finishDelivery(r.id, round: 1, .retry(at: 9_000), attempts: 1, lastError: "http_500", now: 7_100, on: loop) { done($0) } }?.get() == true)
        let retrying = try b.ask { loop, done in b.store.lookup(r.id, on: loop) { done($0) } }?.get()
        #expect(retrying?.callback == JobCallback(url: "https://hooks.test/x", status: .pending, attempts: 1, lastError: "http_500", nextAttemptAt: 9_000))
        #expect(try b.ask { loop, done in b.store.claimDeliveries(max: 10, lease: .seconds(5), now: 8_999, on: loop) { done($0) } }?.get() == [])
        #expect(try b.ask { loop, done in b.store.claimDeliveries(max: 10, lease: .seconds(5), now: 9_000, on: loop) { done($0) } }?.get().count == 1)
        #expect(try b.ask { loop, done in b.store.finishDelivery(r.id, round: 1, .delivered, attempts: 2, lastError: nil, now: 9_100, on: loop) { done($0) } }?.get() == true)
        let delivered = try a.ask { loop, done in a.store.lookup(r.id, on: loop) { done($0) } }?.get()
        #expect(delivered?.callback == JobCallback(url: "https://hooks.test/x", status: .delivered, attempts: 2))

        // Re-armed from either replica: a new round, due now, held anew.
        #expect(try a.ask { loop, done in a.store.rearm(r.id, now: 10_000, on: loop) { done($0) } }?.get() == 2)
        let again = try a.ask { loop, done in a.store.claimDeliveries(max: 10, lease: .seconds(5), now: 10_000, on: loop) { done($0) } }?.get()
        #expect(again?.first?.callback?.round == 2 && again?.first?.callback?.attempts == 0)
        #expect(try a.ask { loop, done in a.store.rearm(r.id, now: 10_001, on: loop) { done($0) } }?.get() == 0)
        #expect(try a.ask { loop, done in a.store.rearm(.random(), now: 10_001, on: loop) { done($0) } }?.get() == .some(nil))
    }
}
