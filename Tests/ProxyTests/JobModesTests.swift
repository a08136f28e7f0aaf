import Config
import DemoBackend
import Foundation
import Jobs
import Store
import Proxy
import Server
import TestSupport
import Testing

/// SPEC §3 modes and preferences, §4 the 202, Idempotency-Key and the
/// X-Callback-Url refusal.
extension JobTests {
    @Suite struct Modes {
        // MARK: async: the 202

        @Test func asyncRouteAnswers202WithLocationAndJobJSON() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port)
            defer { upstream.releaseAll() }
            let before = nowMillis()
            let job = try createJob(proxy.port, path: "/reports?x=1", host: "example.com:8080", body: "payload")
            let r = job.response
            let id = job.id
            // The id: 128 bits as unpadded base64url is 22 URL-safe characters.
            #expect(id.wholeMatch(of: #/[A-Za-z0-9_-]{22}/#) != nil, "job id \(id)")
            #expect(r.header("location") == "/jobs/\(id)")
            #expect(r.header("retry-after").flatMap { Int($0) }.map { $0 >= 1 } == true, "Retry-After \(r.header("retry-after") ?? "missing")")
            #expect(r.header("cache-control") == "no-store")
            #expect(r.header("content-type")?.hasPrefix("application/json") == true)
            let json = job.json
            #expect(json.string("status") == "queued" || json.string("status") == "running", "status in \(r.text)")
            #expect(json.string("status_url") == "http://example.com:8080/jobs/\(id)")
            #expect(json.string("result_url") == "http://example.com:8080/jobs/\(id)/result")
            let created = timestampMillis(json.string("created_at"))
            #expect(created != nil, "created_at in \(r.text)")
            if let created { #expect(created >= before - 5 && created <= nowMillis() + 5, "created_at \(created), sent at \(before)") }
            // No durations observed yet: the honest estimate is null, but the field is there.
            #expect(json.has("estimated_completion"), "estimated_completion missing in \(r.text)")
            #expect(json.isNull("estimated_completion") || timestampMillis(json.string("estimated_completion")) != nil)
            // The job was sent upstream in the background.
            #expect(upstream.waitForRequests(1, timeout: 3))
            #expect(upstream.requestLines.first == "POST /reports?x=1 HTTP/1.1")

            // Ids are fresh per job.
            let other = try createJob(proxy.port, body: "b")
            #expect(other.id != id)
        }

        @Test func publicURLIsTheBaseOfStatusAndResultURLs() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port) { $0.publicURL = "https://api.example.com/" }
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, host: "internal.local:9", body: "x")
            #expect(job.json.string("status_url") == "https://api.example.com/jobs/\(job.id)")
            #expect(job.json.string("result_url") == "https://api.example.com/jobs/\(job.id)/result")
            #expect(job.response.header("location") == "https://api.example.com/jobs/\(job.id)")
            let (_, status) = try jobStatus(proxy.port, job.id)
            #expect(status.string("result_url") == "https://api.example.com/jobs/\(job.id)/result")
        }

        /// A gateway that mounts the proxy under a path: the 202's Location
        /// points where status_url does, not at the bare host's /jobs.
        @Test func aPublicURLWithAPathIsTheLocationsBaseToo() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port) { $0.publicURL = "https://api.example.com/base" }
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, body: "x")
            #expect(job.json.string("status_url") == "https://api.example.com/base/jobs/\(job.id)")
            #expect(job.response.header("location") == job.json.string("status_url"))
        }

        @Test func jobsPathIsConfigurable() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port) { $0.jobs.path = "/api/tasks" }
            upstream.releaseAll()
            let job = try createJob(proxy.port, body: "x")
            #expect(job.response.header("location") == "/api/tasks/\(job.id)")
            #expect(job.json.string("status_url") == "http://test.local/api/tasks/\(job.id)")
            let r = try sendRequest(proxy.port, method: "GET", path: "/api/tasks/\(job.id)?wait=5")
            #expect(r.status == 200)
            #expect(jsonObject(r)?.string("status") == "completed", "\(r.text)")
            #expect(upstream.requestCount == 1, "the job path must never be forwarded")
        }

        @Test(arguments: jobStores) func pipelinedJobRequestsAreAnsweredInOrder(store: String) throws {
            let upstream = try FakeUpstream(gated: true)
            upstream.releaseAll()
            let proxy = try jobProxy(upstreamPort: upstream.port, store: store)
            let c = try RawClient(port: proxy.port, timeout: 10)
            // The 202s wait for their commits; the 404 in between needs none.
            try c.send("POST /a HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\na"
                + "GET /jobs/\(unknownJobID()) HTTP/1.1\r\nHost: test.local\r\n\r\n"
                + "POST /b HTTP/1.1\r\nHost: test.local\r\nContent-Length: 1\r\n\r\nb")
            let first = try c.readResponse()
            let second = try c.readResponse()
            let third = try c.readResponse()
            let statuses: [Int] = [first.status, second.status, third.status]
            #expect(statuses == [202, 404, 202])
            let a = jsonObject(first)?.string("job_id") ?? ""
            let b = jsonObject(third)?.string("job_id") ?? ""
            #expect(try awaitTerminal(proxy.port, a).object("request")?.string("path") == "/a")
            #expect(try awaitTerminal(proxy.port, b).object("request")?.string("path") == "/b")
        }

        @Test func expectContinueOnAnAsyncRoute() throws {
            let upstream = try FakeUpstream(gated: true)
            upstream.releaseAll()
            let proxy = try jobProxy(upstreamPort: upstream.port)
            let c = try RawClient(port: proxy.port, timeout: 5)
            try c.send("POST /x HTTP/1.1\r\nHost: test.local\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            while find(c.buffer, Array("\r\n\r\n".utf8)) == nil { try c.fill() }
            #expect(String(decoding: c.buffer, as: UTF8.self).hasPrefix("HTTP/1.1 100 Continue\r\n"))
            try c.send("hello")
            let r = try c.readResponse()
            #expect(r.status == 202)
            let id = jsonObject(r)?.string("job_id") ?? ""
            #expect(try awaitTerminal(proxy.port, id).string("status") == "completed")
            let sent = upstream.requests.first ?? []
            let sentBody: [UInt8]? = rawHead(sent).map { Array(sent[$0.end...]) }
            #expect(sentBody == Array("hello".utf8))
            #expect(rawHead(sent)?.has("expect") == false)
        }

        // MARK: auto

        @Test func autoRelaysAFastResponseDirectly() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .auto, asyncAfter: .seconds(2))
            let r = try sendRequest(proxy.port, method: "GET", path: "/status/201")
            #expect(r.status == 201)
            #expect(r.text == "{\"status\":201}")
            #expect(r.header("location") == nil)
            #expect(r.header("job-id") == nil)
            #expect(r.header("preference-applied") == nil)
            #expect(proxy.server.jobs.table.count == 0, "a response within async_after makes no job")
            #expect(backend.stats.requests == 1)
        }

        @Test(arguments: jobStores) func autoSwitchesASlowResponseToARunningJobAndNeverResends(store: String) throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .auto, asyncAfter: .milliseconds(200), store: store)
            let start = ContinuousClock.now
            let job = try createJob(proxy.port, method: "GET", path: "/sleep?ms=800")
            let elapsed = secondsSince(start)
            #expect(elapsed >= 0.18 && elapsed < 0.7, "202 after \(elapsed)s, async_after is 200ms")
            #expect(job.json.string("status") == "running", "\(job.response.text)")
            #expect(job.response.header("location") == "/jobs/\(job.id)")
            #expect(backend.stats.requests == 1)
            let (_, running) = try jobStatus(proxy.port, job.id)
            #expect(running.int("attempts") == 1)
            #expect(timestampMillis(running.string("started_at")) != nil, "started_at of a running job: \(running)")

            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed")
            #expect(done.int("attempts") == 1)
            let result = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(result.status == 200)
            #expect(result.text == "{\"slept_ms\":800}")
            #expect(result.header("job-id") == job.id)
            // The switch went on with the same exchange: one request upstream in all.
            #expect(backend.stats.requests == 1, "the backend saw \(backend.stats.requests) requests")
        }

        /// Responses landing right at `async_after`, while the job is being
        /// committed: each request is either relayed or becomes a job whose
        /// result is the response, and the backend sees each exactly once.
        @Test(arguments: jobStores) func autoSwitchAtTheDeadlineNeitherLosesNorResends(store: String) throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .auto, asyncAfter: .milliseconds(200),
                                     threads: 2, store: store)
            let port = proxy.port
            let sleeps = Array(stride(from: 185, to: 215, by: 2))
            let answers = try onThreads(sleeps.count) { i -> String in
                guard let r = try? sendRequest(port, method: "GET", path: "/sleep?ms=\(sleeps[i])") else { return "error" }
                if r.status == 202, let id = jsonObject(r)?.string("job_id") { return "job:" + id }
                return "\(r.status):" + r.text
            }
            var jobs = 0
            for (i, a) in answers.enumerated() {
                let want = "{\"slept_ms\":\(sleeps[i])}"
                guard let a else { Issue.record("no answer for \(sleeps[i])"); continue }
                if a.hasPrefix("job:") {
                    jobs += 1
                    let id = String(a.dropFirst(4))
                    let done = try awaitTerminal(port, id)
                    #expect(done.string("status") == "completed", "sleep \(sleeps[i]): \(done)")
                    let result = try sendRequest(port, method: "GET", path: "/jobs/\(id)/result")
                    #expect(result.status == 200 && result.text == want, "sleep \(sleeps[i]): result \(result.status) \(result.text)")
                } else {
                    #expect(a == "200:" + want, "sleep \(sleeps[i]): \(a)")
                }
            }
            #expect(backend.stats.requests == sleeps.count, "\(backend.stats.requests) backend requests for \(sleeps.count) client requests (\(jobs) jobs)")
            #expect(proxy.server.jobs.table.count == jobs)
        }

        @Test func autoFailureBeforeTheSwitchIsAnsweredAsInSync() throws {
            let proxy = try jobProxy(upstreamPort: try closedPort(), mode: .auto, asyncAfter: .seconds(2))
            let r = try sendRequest(proxy.port, method: "GET", path: "/x")
            expectJSONError(r, status: 502, code: "upstream_unreachable")
            #expect(r.header("location") == nil)
            #expect(proxy.server.jobs.table.count == 0)
        }

        @Test func waitingForASlotCountsTowardAsyncAfter() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .auto, asyncAfter: .milliseconds(300)) { c in
                c.upstreams[0].maxConcurrency = 1
                // A sync route to the same upstream holds its only slot.
                var sync = Route(upstream: "app")
                sync.host = "hold"
                sync.mode = .sync
                c.routes.insert(sync, at: 0)
            }
            let holder = try RawClient(port: proxy.port, timeout: 10)
            try holder.send("GET /sleep?ms=900 HTTP/1.1\r\nHost: hold\r\n\r\n")
            #expect(waitUntil(timeout: 3) { backend.stats.inFlight == 1 })
            let start = ContinuousClock.now
            let job = try createJob(proxy.port, method: "GET", path: "/sleep?ms=10")
            let elapsed = secondsSince(start)
            // It never got the slot: 202 queued at async_after, not after the holder.
            #expect(elapsed >= 0.27 && elapsed < 0.75, "202 after \(elapsed)s, async_after is 300ms")
            #expect(job.json.string("status") == "queued", "\(job.response.text)")
            #expect(backend.stats.requests == 1, "the queued request must not have been sent yet")
            // Once the slot is free, the queued job runs, once.
            #expect(try holder.readResponse().status == 200)
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed", "\(done)")
            #expect(done.object("response")?.int("status") == 200)
            #expect(backend.stats.requests == 2)
            #expect(backend.stats.maxInFlight == 1, "max_concurrency 1 counts sync and jobs together")
        }

        // MARK: Prefer

        @Test func preferRespondAsyncOnAnAutoRouteAnswers202AtOnce() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .auto, asyncAfter: .seconds(5))
            let start = ContinuousClock.now
            let job = try createJob(proxy.port, method: "GET", path: "/sleep?ms=300", headers: ["Prefer: respond-async"])
            let elapsed = secondsSince(start)
            #expect(elapsed < 0.25, "respond-async answered after \(elapsed)s")
            #expect(job.response.header("preference-applied") == "respond-async")
            #expect(job.response.header("location") == "/jobs/\(job.id)")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed")
            #expect(backend.stats.requests == 1)
        }

        @Test func preferWaitOnAnAsyncRouteRelaysAFastResponse() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .async)
            let start = ContinuousClock.now
            let r = try sendRequest(proxy.port, method: "GET", path: "/status/201", headers: ["Prefer: wait=1"])
            let elapsed = secondsSince(start)
            #expect(r.status == 201, "\(r.status) \(r.text)")
            #expect(r.text == "{\"status\":201}")
            #expect(r.header("preference-applied") == "wait=1")
            #expect(r.header("location") == nil)
            // Relayed when it arrives, not when the wait runs out.
            #expect(elapsed < 0.5, "a fast response under Prefer: wait=1 took \(elapsed)s")
            #expect(backend.stats.requests == 1)
        }

        @Test func preferWaitOnAnAutoRouteRelaysAFastResponse() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .auto, asyncAfter: .milliseconds(100))
            let start = ContinuousClock.now
            let r = try sendRequest(proxy.port, method: "GET", path: "/sleep?ms=300", headers: ["Prefer: wait=1"])
            let elapsed = secondsSince(start)
            #expect(r.status == 200, "\(r.status) \(r.text)")
            #expect(r.text == "{\"slept_ms\":300}")
            #expect(r.header("preference-applied") == "wait=1")
            #expect(r.header("location") == nil)
            #expect(elapsed < 0.8, "took \(elapsed)s")
            #expect(proxy.server.jobs.table.count == 0)
        }

        /// RFC 7240's own example: respond-async with a wait bounds the wait,
        /// so a fast response is relayed and a slow one becomes a 202.
        @Test(arguments: ["respond-async, wait=1", "wait=1, respond-async"])
        func respondAsyncWithAWaitIsTheWait(prefer: String) throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .auto, asyncAfter: .milliseconds(100))
            let fast = try sendRequest(proxy.port, method: "GET", path: "/sleep?ms=300", headers: ["Prefer: \(prefer)"])
            #expect(fast.status == 200, "\(fast.status) \(fast.text)")
            #expect(fast.text == "{\"slept_ms\":300}")
            #expect(fast.header("preference-applied") == "wait=1")
            let start = ContinuousClock.now
            let slow = try createJob(proxy.port, method: "GET", path: "/sleep?ms=3000", headers: ["Prefer: \(prefer)"])
            let elapsed = secondsSince(start)
            #expect(elapsed >= 0.95 && elapsed < 1.6, "202 after \(elapsed)s")
            #expect(slow.response.header("preference-applied") == "wait=1")
            #expect(backend.stats.requests == 2)
        }

        @Test func preferIsIgnoredOnASyncRoute() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, mode: .sync)
            let r = try sendRequest(proxy.port, method: "GET", path: "/sleep?ms=50", headers: ["Prefer: respond-async"])
            #expect(r.status == 200)
            #expect(r.header("preference-applied") == nil)
            #expect(proxy.server.jobs.table.count == 0)
        }

        @Test func preferWaitOnAnAsyncRouteAnswers202AfterTheWait() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port, mode: .async)
            defer { upstream.releaseAll() }
            let start = ContinuousClock.now
            let job = try createJob(proxy.port, headers: ["Prefer: wait=1"], body: "x")
            let elapsed = secondsSince(start)
            #expect(elapsed >= 0.95 && elapsed < 1.6, "202 after \(elapsed)s for Prefer: wait=1")
            #expect(job.response.header("preference-applied") == "wait=1")
            #expect(job.json.string("status") == "running", "\(job.response.text)")
            #expect(upstream.requestCount == 1)
        }

        @Test func preferWaitOnAnAutoRouteReplacesAsyncAfter() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port, mode: .auto, asyncAfter: .milliseconds(100))
            defer { upstream.releaseAll() }
            let start = ContinuousClock.now
            let job = try createJob(proxy.port, method: "GET", path: "/slow", headers: ["Prefer: wait=1"])
            let elapsed = secondsSince(start)
            #expect(elapsed >= 0.95 && elapsed < 1.6, "202 after \(elapsed)s for Prefer: wait=1 (async_after 100ms)")
            #expect(job.response.header("preference-applied") == "wait=1")
            #expect(job.json.string("status") == "running")
            upstream.release()
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed")
            #expect(upstream.requestCount == 1, "the switch must not resend")
        }

        @Test func preferWaitIsCappedByMaxWait() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port, mode: .async) { $0.jobs.maxWait = .seconds(1) }
            defer { upstream.releaseAll() }
            let start = ContinuousClock.now
            let job = try createJob(proxy.port, headers: ["Prefer: wait=30"], body: "x")
            let elapsed = secondsSince(start)
            #expect(elapsed >= 0.95 && elapsed < 1.6, "202 after \(elapsed)s: Prefer: wait=30 capped by max_wait 1s")
            // The wait honoured was 1 s.
            #expect(job.response.header("preference-applied") == "wait=1")
        }

        // MARK: Idempotency-Key

        @Test(arguments: jobStores) func idempotencyKeyReturnsTheSameJobAndSendsOnce(store: String) throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port, mode: .async, store: store)
            defer { upstream.releaseAll() }
            let first = try createJob(proxy.port, headers: ["Idempotency-Key: k-1"], body: "same body")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let again = try createJob(proxy.port, headers: ["Idempotency-Key: k-1"], body: "same body")
            #expect(again.id == first.id)
            #expect(again.response.header("location") == first.response.header("location"))
            upstream.release()
            _ = try awaitTerminal(proxy.port, first.id)
            // After it ended, still the same job.
            let late = try createJob(proxy.port, headers: ["Idempotency-Key: k-1"], body: "same body")
            #expect(late.id == first.id)
            #expect(upstream.requestCount == 1, "the upstream saw \(upstream.requestCount) requests for one key")

            // The same key for a different request: 422.
            let other = try sendRequest(proxy.port, headers: ["Idempotency-Key: k-1"], body: "another body")
            expectJSONError(other, status: 422)
            let otherPath = try sendRequest(proxy.port, path: "/elsewhere", headers: ["Idempotency-Key: k-1"], body: "same body")
            expectJSONError(otherPath, status: 422)
            #expect(proxy.server.jobs.table.count == 1)
            #expect(upstream.requestCount == 1)

            // A different key is a different job.
            let fresh = try createJob(proxy.port, headers: ["Idempotency-Key: k-2"], body: "same body")
            #expect(fresh.id != first.id)
        }

        // MARK: Callbacks

        @Test func callbackURLOnARouteWithoutCallbackIs400AndMakesNoJob() throws {
            let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
            for mode in [RouteMode.async, .auto] {
                let proxy = try jobProxy(upstreamPort: upstream.port, mode: mode)
                let r = try sendRequest(proxy.port, headers: ["X-Callback-Url: https://hooks.example.com/x"], body: "x")
                expectJSONError(r, status: 400)
                #expect(proxy.server.jobs.table.count == 0, "\(mode): a refused callback must not leave a job")
            }
            // Negative check with no event to wait for: nothing may reach the upstream.
            #expect(!upstream.wait(timeout: 0.3) { $0.connections > 0 }, "the refused request reached the upstream")
        }
    }
}
