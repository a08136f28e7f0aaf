import Config
import Foundation
import TestSupport
import Testing

/// SPEC §4, upstream retries: which failures are tried again, how often,
/// and what a job ends as when the tries run out.
extension JobTests {
    @Suite struct Retries {
        /// Answers each request with the next of `statuses` (the last one
        /// repeats), and records every request head's Job-Attempt.
        final class Script: @unchecked Sendable {
            let attempts = Box<[String]>([])
            let times = Box<[Date]>([])
            let upstream: FakeUpstream

            init(_ statuses: [Int], retryAfter: Int? = nil) throws {
                let attempts = self.attempts
                let times = self.times
                upstream = try FakeUpstream { got in
                    guard isWholeRequest(got) else { return nil }
                    let attempt = rawHead(got)?.values("job-attempt").first ?? "none"
                    let n = attempts.withLock { a -> Int in
                        a.append(attempt)
                        return a.count
                    }
                    times.withLock { $0.append(Date()) }
                    let status = statuses[min(n, statuses.count) - 1]
                    let extra = retryAfter.map { "Retry-After: \($0)\r\n" } ?? ""
                    return Array("HTTP/1.1 \(status) X\r\nContent-Length: 2\r\n\(extra)Connection: close\r\n\r\n\(status / 100)x".utf8)
                }
            }
        }

        func proxy(_ port: Int, attempts: Int, backoff: Duration = .milliseconds(20),
                   maxBackoff: Duration = .seconds(5)) throws -> TestProxy {
            try jobProxy(upstreamPort: port) { c in
                c.upstreams[0].retry = RetryPolicy(attempts: attempts, backoff: backoff, maxBackoff: maxBackoff)
            }
        }

        @Test func anIdempotentJobIsRetriedOn503UntilItSucceeds() throws {
            let script = try Script([503, 503, 200])
            let p = try proxy(script.upstream.port, attempts: 3)
            let job = try createJob(p.port, method: "PUT", body: "x")
            let done = try awaitTerminal(p.port, job.id)
            #expect(done.string("status") == "completed")
            #expect(done.object("response")?.int("status") == 200)
            #expect(done.int("attempts") == 3)
            #expect(script.attempts.withLock { $0 } == ["1", "2", "3"])
        }

        @Test func aPostWithoutKeyIsNotSentTwiceAndItsLast503IsTheResult() throws {
            let script = try Script([503, 200])
            let p = try proxy(script.upstream.port, attempts: 3)
            let job = try createJob(p.port, method: "POST", body: "x")
            let done = try awaitTerminal(p.port, job.id)
            #expect(done.string("status") == "completed")
            #expect(done.object("response")?.int("status") == 503)
            #expect(done.int("attempts") == 1)
            #expect(script.attempts.withLock { $0 } == ["1"])
        }

        @Test func aPostWithAnIdempotencyKeyIsRetried() throws {
            let script = try Script([502, 200])
            let p = try proxy(script.upstream.port, attempts: 2)
            let job = try createJob(p.port, method: "POST", headers: ["Idempotency-Key: r-1"], body: "x")
            let done = try awaitTerminal(p.port, job.id)
            #expect(done.object("response")?.int("status") == 200)
            #expect(script.attempts.withLock { $0 } == ["1", "2"])
        }

        @Test func anUnreachableUpstreamIsRetriedThenTheJobFails() throws {
            let p = try proxy(try closedPort(), attempts: 3)
            let job = try createJob(p.port, method: "POST", body: "x")
            let done = try awaitTerminal(p.port, job.id)
            #expect(done.string("status") == "failed")
            #expect(done.object("error")?.string("code") == "upstream_unreachable")
            #expect(done.int("attempts") == 3, "a request that never reached the upstream is always safe to retry")
        }

        /// The upstream's Retry-After is honoured, also when it is longer
        /// than `max_backoff` (SPEC §4): the elapsed time between the tries
        /// is what this test checks.
        @Test(arguments: [(1, 5), (2, 1)])
        func retryAfterIsHonoured(retryAfter: Int, maxBackoffSeconds: Int) throws {
            let script = try Script([503, 200], retryAfter: retryAfter)
            let p = try proxy(script.upstream.port, attempts: 2, backoff: .milliseconds(10),
                              maxBackoff: .seconds(maxBackoffSeconds))
            let job = try createJob(p.port, method: "PUT", body: "x")
            #expect(try awaitTerminal(p.port, job.id).object("response")?.int("status") == 200)
            let times = script.times.withLock { $0 }
            #expect(times.count == 2)
            if times.count == 2 {
                #expect(times[1].timeIntervalSince(times[0]) >= Double(retryAfter) - 0.1,
                        "Retry-After: \(retryAfter) with max_backoff: \(maxBackoffSeconds)s")
            }
        }
    }
}

extension JobTests {
    @Suite struct QueuePlaces {
        /// A canceled queued job gives its place in the upstream's queue back
        /// at once, not when a slot frees up (which may take `timeout`).
        @Test func deletingAQueuedJobFreesItsPlace() throws {
            let upstream = try FakeUpstream(gated: true)
            defer { upstream.releaseAll() }
            let proxy = try jobProxy(upstreamPort: upstream.port) {
                $0.upstreams[0].maxConcurrency = 1
                $0.upstreams[0].maxQueued = 1
            }
            let running = try createJob(proxy.port, path: "/a", body: "a")
            #expect(upstream.waitForRequests(1, timeout: 5))
            let queued = try createJob(proxy.port, path: "/b", body: "b")
            expectJSONError(try sendRequest(proxy.port, path: "/c", body: "c"), status: 503)
            let canceled = try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(queued.id)")
            #expect(canceled.status == 200)
            let third = try createJob(proxy.port, path: "/d", body: "d")
            upstream.releaseAll()
            #expect(try awaitTerminal(proxy.port, running.id).string("status") == "completed")
            #expect(try awaitTerminal(proxy.port, third.id).string("status") == "completed")
            #expect(upstream.requestCount == 2, "the canceled job is never sent")
        }
    }
}
