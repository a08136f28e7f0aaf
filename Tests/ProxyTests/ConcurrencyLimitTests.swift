import Config
import DemoBackend
import Foundation
import Loop
import Proxy
import TestSupport
import Testing

/// SPEC §2 `max_concurrency` / `max_queued` on sync routes.
@Suite struct ConcurrencyLimitTests {
    @Test func maxConcurrencyBoundsRequestsInFlightUpstream() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port, threads: 2) { $0.upstreams[0].maxConcurrency = 2 }
        let port = proxy.port
        let statuses = try onThreads(10) { _ in
            (try? get(port, "/sleep?ms=100"))?.status ?? -1
        }
        #expect(statuses.allSatisfy { $0 == 200 }, "statuses: \(statuses)")
        #expect(backend.stats.requests == 10)
        #expect(backend.stats.maxInFlight <= 2, "the upstream saw \(backend.stats.maxInFlight) requests at once")
        #expect(backend.stats.maxInFlight == 2, "max_concurrency 2 was never used in full")
    }

    @Test func fullQueueIs503WithRetryAfter() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port) {
            $0.upstreams[0].maxConcurrency = 1
            $0.upstreams[0].maxQueued = 1
        }
        // One in flight...
        let a = try RawClient(port: proxy.port, timeout: 10)
        try a.send("GET /sleep?ms=1000 HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(waitUntil(timeout: 3) { backend.stats.inFlight == 1 })
        let start = ContinuousClock.now
        // ...one queued, and one too many. Which of the two the proxy sees
        // first is up to the scheduler: one must be refused at once, the
        // other served once the first is done.
        let b = try RawClient(port: proxy.port, timeout: 10)
        try b.send("GET /sleep?ms=10 HTTP/1.1\r\nHost: a\r\n\r\n")
        let c = try RawClient(port: proxy.port, timeout: 10)
        try c.send("GET /sleep?ms=11 HTTP/1.1\r\nHost: a\r\n\r\n")
        let rc = try c.readResponse()
        let rcAt = secondsSince(start)
        let rb = try b.readResponse()
        let refused = rc.status == 503 ? rc : rb
        let served = rc.status == 503 ? rb : rc
        expectJSONError(refused, status: 503)
        let retryAfter = refused.header("retry-after")
        #expect(retryAfter.flatMap { Int($0) }.map { $0 >= 0 } == true, "Retry-After: \(retryAfter ?? "missing")")
        if rc.status == 503 {
            #expect(rcAt < 0.8, "the refusal took \(rcAt)s: it waited in the queue")
        }
        #expect(served.status == 200)
        #expect(try a.readResponse().status == 200)
        #expect(backend.stats.maxInFlight == 1)
        #expect(backend.stats.requests == 2, "the refused request must not reach the upstream")
    }
}

/// The gate's bookkeeping without sockets: what a burst of jobs being
/// committed may hold, and what the queue then takes.
@Suite struct ConcurrencyGateReservationTests {
    @Test func reservationsCountAgainstConcurrencyPlusQueue() {
        let gate = LocalConcurrencyGate(limit: 1, maxQueued: 2)
        #expect(gate.tryReserve())
        #expect(gate.tryReserve())
        #expect(gate.tryReserve())
        #expect(!gate.tryReserve(), "1 in flight + 2 queued is the whole capacity")
        gate.unreserve()
        #expect(gate.tryReserve())
    }

    @Test func slotsInFlightAndQueuedLeaveLessToReserve() {
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        let gate = LocalConcurrencyGate(limit: 1, maxQueued: 2)
        let waiter = GateWaiter(loop: group.loops[0], grant: {})
        #expect(gate.acquire(waiter) == .acquired)
        #expect(gate.acquire(waiter) == .queued)
        #expect(gate.tryReserve())
        #expect(!gate.tryReserve())
        // An accepted job is queued even past max_queued: it must not be dropped.
        #expect(gate.acquire(waiter, force: true) == .queued)
        #expect(gate.queued == 2)
        #expect(gate.acquire(waiter) == .rejected)
    }
}

@Suite struct ConcurrencyGateWithdrawTests {
    @Test func aWithdrawnWaiterLeavesTheQueueAndIsNeverGranted() {
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        let gate = LocalConcurrencyGate(limit: 1, maxQueued: 1)
        let granted = Box<[Int]>([])
        func waiter(_ n: Int, token: UInt64 = 0) -> GateWaiter {
            GateWaiter(loop: group.loops[0], token: token) { granted.withLock { $0.append(n) } }
        }
        #expect(gate.acquire(waiter(1)) == .acquired)
        let token = gate.makeToken()
        #expect(gate.acquire(waiter(2, token: token)) == .queued)
        #expect(gate.acquire(waiter(3)) == .rejected, "the queue of 1 is full")
        #expect(gate.withdraw(token))
        #expect(gate.queued == 0)
        #expect(!gate.withdraw(token), "a waiter leaves once")
        #expect(gate.acquire(waiter(4)) == .queued, "the withdrawn place is free again")
        gate.release()
        #expect(granted.wait(timeout: 2) { $0 == [4] })
    }
}
