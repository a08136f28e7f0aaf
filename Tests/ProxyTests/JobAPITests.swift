import Config
import DemoBackend
import Foundation
import Jobs
import Store
import Proxy
import Server
import TestSupport
import Testing

/// SPEC §4 the job API: status JSON through the lifecycle, results of
/// pending, failed and canceled jobs, `?wait=` long polls, DELETE, the one
/// 404, `jobs.bind_to` and `result_ttl`.
extension JobTests {
    @Suite struct API {
        // MARK: Status through the lifecycle

        @Test(arguments: jobStores) func statusJSONThroughQueuedRunningCompleted(store: String) throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port, store: store) { $0.upstreams[0].maxConcurrency = 1 }
            defer { upstream.releaseAll() }
            // A occupies the only slot; B waits behind it.
            let a = try createJob(proxy.port, path: "/a", body: "first")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let b = try createJob(proxy.port, method: "PUT", path: "/b/item?v=2", body: "second")
            #expect(b.json.string("status") == "queued")

            // queued
            let (qr, queued) = try jobStatus(proxy.port, b.id)
            #expect(qr.status == 200)
            #expect(qr.header("content-type")?.hasPrefix("application/json") == true)
            #expect(qr.header("cache-control") == "no-store")
            #expect(qr.header("retry-after").flatMap { Int($0) }.map { $0 >= 1 } == true, "Retry-After while queued: \(qr.header("retry-after") ?? "missing")")
            #expect(queued.string("job_id") == b.id)
            #expect(queued.string("status") == "queued")
            #expect(timestampMillis(queued.string("created_at")) == timestampMillis(b.json.string("created_at")))
            #expect(queued.isNull("started_at"), "started_at while queued: \(qr.text)")
            #expect(queued.isNull("completed_at"), "completed_at while queued: \(qr.text)")
            #expect(queued.int("attempts") == 0)
            #expect(queued.object("request")?.string("method") == "PUT")
            #expect(queued.object("request")?.string("path") == "/b/item?v=2")
            #expect(queued.has("estimated_completion"), "estimated_completion while queued: \(qr.text)")
            #expect(!queued.has("response") && !queued.has("error"), "\(qr.text)")
            #expect(queued.string("result_url") == "http://test.local/jobs/\(b.id)/result")

            // running (A)
            let (ar, runningA) = try jobStatus(proxy.port, a.id)
            #expect(runningA.string("status") == "running")
            #expect(ar.header("retry-after") != nil)
            #expect(timestampMillis(runningA.string("started_at")) != nil, "started_at while running: \(ar.text)")
            #expect(runningA.isNull("completed_at"))
            #expect(runningA.int("attempts") == 1)
            #expect(runningA.object("request")?.string("method") == "POST")
            #expect(runningA.object("request")?.string("path") == "/a")

            // A completes; B runs. A's POST was observed, but B is a PUT: no
            // observation of its route and method yet, so its estimate is null
            // (SPEC §4); a new POST's 202 has one.
            upstream.release()
            #expect(upstream.waitForRequests(2, timeout: 3))
            #expect(waitForJobStatus(proxy.port, b.id, "running"))
            let (br, runningB) = try jobStatus(proxy.port, b.id)
            #expect(runningB.int("attempts") == 1)
            #expect(br.header("retry-after") != nil)
            let startedB = timestampMillis(runningB.string("started_at"))
            #expect(startedB != nil)
            #expect(runningB.isNull("estimated_completion"), "no PUT was observed yet: \(br.text)")
            let c = try createJob(proxy.port, path: "/c", body: "third")
            let estimate = timestampMillis(c.json.string("estimated_completion"))
            #expect(estimate != nil, "a POST on this route was observed: the estimate should not be null: \(c.response.text)")
            if let estimate, let startedB { #expect(estimate >= startedB) }

            // completed
            upstream.release(2)
            let done = try awaitTerminal(proxy.port, b.id)
            let (dr, completed) = try jobStatus(proxy.port, b.id)
            #expect(done.string("status") == "completed")
            #expect(completed.string("status") == "completed")
            #expect(dr.header("retry-after") == nil, "Retry-After on a terminal job")
            #expect(dr.header("cache-control") == "no-store")
            #expect(!completed.has("estimated_completion"), "estimated_completion on a completed job: \(dr.text)")
            #expect(!completed.has("error"))
            #expect(completed.int("attempts") == 1)
            let response = completed.object("response")
            #expect(response?.int("status") == 200)
            #expect(response?.string("content_type") == "text/plain")
            #expect(response?.int("size") == 4)
            let created = timestampMillis(completed.string("created_at"))
            let started = timestampMillis(completed.string("started_at"))
            let ended = timestampMillis(completed.string("completed_at"))
            #expect(created != nil && started != nil && ended != nil, "\(dr.text)")
            if let created, let started, let ended {
                #expect(created <= started && started <= ended, "created \(created) started \(started) completed \(ended)")
            }
            #expect(completed.string("result_url") == "http://test.local/jobs/\(b.id)/result")
        }

        // MARK: Results that are not (yet) a response

        @Test func pendingResultIs202WithStatusJSON() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port)
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, body: "x")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(r.status == 202)
            #expect(r.header("retry-after") != nil)
            #expect(r.header("cache-control") == "no-store")
            #expect(jsonObject(r)?.string("status") == "running", "\(r.text)")
            #expect(jsonObject(r)?.string("job_id") == job.id)
        }

        @Test func refusedUpstreamFailsTheJobAndResultIs502() throws {
            let proxy = try jobProxy(upstreamPort: try closedPort())
            let job = try createJob(proxy.port, body: "x")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "failed")
            #expect(done.object("error")?.string("code") == "upstream_unreachable")
            #expect(done.object("error")?.string("message")?.isEmpty == false)
            #expect(!done.has("response"))
            #expect(timestampMillis(done.string("completed_at")) != nil)
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(r.status == 502)
            #expect(r.header("content-type")?.hasPrefix("application/json") == true)
            #expect(r.header("retry-after") == nil)
            #expect(jsonObject(r)?.string("status") == "failed", "\(r.text)")
            #expect(jsonObject(r)?.object("error")?.string("code") == "upstream_unreachable")
        }

        @Test func upstreamTimeoutFailsTheJobAndResultIs504() throws {
            let upstream = try FakeUpstream(reply: neverReply)
            let proxy = try jobProxy(upstreamPort: upstream.port) { $0.upstreams[0].timeout = .milliseconds(300) }
            let job = try createJob(proxy.port, body: "x")
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result?wait=5")
            #expect(r.status == 504, "\(r.status) \(r.text)")
            #expect(jsonObject(r)?.string("status") == "failed")
            #expect(jsonObject(r)?.object("error")?.string("code") == "upstream_timeout")
            // The timed-out exchange was closed.
            #expect(upstream.wait(timeout: 3) { $0.closedByPeer >= 1 })
        }

        @Test func upstreamResetBeforeAResponseFailsTheJob() throws {
            // Takes the request, closes without a byte of response.
            let upstream = try FakeUpstream { got in isWholeRequest(got) ? [] : nil }
            let proxy = try jobProxy(upstreamPort: upstream.port)
            let job = try createJob(proxy.port, body: "x")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "failed", "\(done)")
            #expect(done.object("error")?.string("code") == "upstream_reset")
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(r.status == 502)
            #expect(jsonObject(r)?.object("error")?.string("code") == "upstream_reset")
            #expect(upstream.connections == 1, "a POST must not be resent after the upstream took it")
        }

        @Test func responseOverMaxResultBodyFailsTheJob() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port) { $0.jobs.maxResultBody = 1000 }
            let job = try createJob(proxy.port, method: "GET", path: "/bytes/5000")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "failed", "\(done)")
            #expect(done.object("error")?.string("code") == "response_too_large")
            #expect(!done.has("response"))
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(r.status == 502)
            #expect(jsonObject(r)?.object("error")?.string("code") == "response_too_large")
            // Exactly at the limit is a result.
            let fits = try createJob(proxy.port, method: "GET", path: "/bytes/1000")
            #expect(try awaitTerminal(proxy.port, fits.id).object("response")?.int("size") == 1000)
        }

        @Test func canceledResultIs409() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port)
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, body: "x")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let d = try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(job.id)")
            #expect(d.status == 200)
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(r.status == 409)
            #expect(jsonObject(r)?.string("status") == "canceled", "\(r.text)")
            #expect(r.header("retry-after") == nil)
        }

        // MARK: Long polls

        @Test func longPollWakesWithin100msOfCompletion() throws {
            let upstream = try FakeUpstream(gated: true)
            // Two loops: the poll may sit on another loop than the exchange.
            let proxy = try jobProxy(upstreamPort: upstream.port, threads: 2)
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, body: "x")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let statusPoll = try RawClient(port: proxy.port, timeout: 15)
            try statusPoll.send("GET /jobs/\(job.id)?wait=10 HTTP/1.1\r\nHost: test.local\r\n\r\n")
            let resultPoll = try RawClient(port: proxy.port, timeout: 15)
            try resultPoll.send("GET /jobs/\(job.id)/result?wait=10 HTTP/1.1\r\nHost: test.local\r\n\r\n")
            // Both are held while the job runs (no event says "held": a bounded look).
            statusPoll.setTimeout(0.2)
            #expect((try? statusPoll.fill()) == nil, "the long poll answered while the job was running: \(statusPoll.buffer.count) bytes")
            statusPoll.setTimeout(15)

            upstream.release()
            let s = try statusPoll.readResponse()
            let sAt = ContinuousClock.now
            let r = try resultPoll.readResponse()
            let rAt = ContinuousClock.now
            guard let replied = upstream.repliedAt.first else {
                Issue.record("the upstream never replied")
                return
            }
            let statusLag = Double((sAt - replied).components.attoseconds) / 1e18 + Double((sAt - replied).components.seconds)
            let resultLag = Double((rAt - replied).components.attoseconds) / 1e18 + Double((rAt - replied).components.seconds)
            #expect(s.status == 200)
            #expect(jsonObject(s)?.string("status") == "completed", "\(s.text)")
            #expect(statusLag < 0.1, "status long poll woke \(statusLag)s after the upstream answered")
            #expect(r.status == 200)
            #expect(r.text == "done")
            #expect(r.header("job-id") == job.id)
            #expect(resultLag < 0.1, "result long poll woke \(resultLag)s after the upstream answered")
        }

        @Test func longPollWakesWhenTheJobIsCanceled() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port, threads: 2)
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, body: "x")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let poll = try RawClient(port: proxy.port, timeout: 15)
            try poll.send("GET /jobs/\(job.id)/result?wait=10 HTTP/1.1\r\nHost: test.local\r\n\r\n")
            poll.setTimeout(0.2)
            #expect((try? poll.fill()) == nil, "the long poll answered while the job was running")
            poll.setTimeout(15)
            let start = ContinuousClock.now
            #expect(try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(job.id)").status == 200)
            let r = try poll.readResponse()
            let lag = secondsSince(start)
            #expect(r.status == 409, "\(r.status) \(r.text)")
            #expect(lag < 0.1, "the poll woke \(lag)s after DELETE")
            #expect(upstream.wait(timeout: 3) { $0.closedWhileWaiting == 1 })
        }

        @Test func longPollReturnsAfterTheWaitAndIsCappedByMaxWait() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port) { $0.jobs.maxWait = .seconds(1) }
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, body: "x")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let asked = try RawClient(port: proxy.port, timeout: 10)
            let capped = try RawClient(port: proxy.port, timeout: 10)
            let start = ContinuousClock.now
            try asked.send("GET /jobs/\(job.id)?wait=1 HTTP/1.1\r\nHost: test.local\r\n\r\n")
            try capped.send("GET /jobs/\(job.id)/result?wait=30 HTTP/1.1\r\nHost: test.local\r\n\r\n")
            let a = try asked.readResponse()
            let aAt = secondsSince(start)
            let c = try capped.readResponse()
            let cAt = secondsSince(start)
            #expect(a.status == 200)
            #expect(jsonObject(a)?.string("status") == "running")
            #expect(a.header("retry-after") != nil)
            #expect(aAt >= 0.95 && aAt < 1.6, "?wait=1 answered after \(aAt)s")
            #expect(c.status == 202, "a pending result after the wait: 202")
            #expect(cAt >= 0.95 && cAt < 1.6, "?wait=30 with max_wait 1s answered after \(cAt)s")
        }

        // MARK: DELETE

        @Test func deleteQueuedJobCancelsItAndItIsNeverSent() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port) { $0.upstreams[0].maxConcurrency = 1 }
            defer { upstream.releaseAll() }
            let a = try createJob(proxy.port, path: "/a", body: "a")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let b = try createJob(proxy.port, path: "/b", body: "b")
            let c = try createJob(proxy.port, path: "/c", body: "c")
            let d = try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(b.id)")
            #expect(d.status == 200)
            #expect(d.header("content-type")?.hasPrefix("application/json") == true)
            let canceled = jsonObject(d)
            #expect(canceled?.string("status") == "canceled", "\(d.text)")
            #expect(canceled?.isNull("started_at") == true)
            #expect(timestampMillis(canceled?.string("completed_at")) != nil)
            #expect(d.header("retry-after") == nil)
            let (_, after) = try jobStatus(proxy.port, b.id)
            #expect(after.string("status") == "canceled")
            // FIFO: had B still been queued it would go before C.
            upstream.releaseAll()
            #expect(try awaitTerminal(proxy.port, a.id).string("status") == "completed")
            #expect(try awaitTerminal(proxy.port, c.id).string("status") == "completed")
            #expect(upstream.requestLines == ["POST /a HTTP/1.1", "POST /c HTTP/1.1"], "\(upstream.requestLines)")
            #expect(try jobStatus(proxy.port, b.id).1.int("attempts") == 0)
        }

        @Test(arguments: jobStores) func deleteRunningJobAbortsTheUpstreamExchange(store: String) throws {
            let upstream = try FakeUpstream(reply: neverReply)
            let proxy = try jobProxy(upstreamPort: upstream.port, store: store) { $0.upstreams[0].maxConcurrency = 1 }
            let job = try createJob(proxy.port, body: "x")
            #expect(upstream.waitForReceived(timeout: 3) { isWholeRequest($0) })
            #expect(upstream.closedByPeer == 0)
            let d = try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(job.id)")
            #expect(d.status == 200)
            #expect(jsonObject(d)?.string("status") == "canceled", "\(d.text)")
            #expect(upstream.waitForPeerCloses(1, timeout: 3), "the upstream did not see the connection close")
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(r.status == 409)
            // The aborted exchange gave its slot back (max_concurrency 1): the next job is sent.
            let next = try createJob(proxy.port, body: "y")
            #expect(upstream.waitForConnections(2, timeout: 3), "the next job never reached the upstream")
            #expect(try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(next.id)").status == 200)
        }

        @Test func deleteOfAnAutoJobAbortsTheSwitchedExchange() throws {
            let upstream = try FakeUpstream(reply: neverReply)
            let proxy = try jobProxy(upstreamPort: upstream.port, mode: .auto, asyncAfter: .milliseconds(100))
            let job = try createJob(proxy.port, method: "GET", path: "/slow")
            #expect(job.json.string("status") == "running")
            let d = try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(job.id)")
            #expect(d.status == 200)
            #expect(jsonObject(d)?.string("status") == "canceled", "\(d.text)")
            #expect(upstream.waitForPeerCloses(1, timeout: 3), "the upstream did not see the connection close")
            #expect(upstream.connections == 1)
        }

        @Test func deleteTerminalJobIs204AndThenItIsGone() throws {
            let upstream = try FakeUpstream(gated: true)
            upstream.releaseAll()
            let proxy = try jobProxy(upstreamPort: upstream.port)
            let job = try createJob(proxy.port, body: "x")
            #expect(try awaitTerminal(proxy.port, job.id).string("status") == "completed")
            let d = try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(job.id)")
            #expect(d.status == 204)
            #expect(d.body.isEmpty)
            #expect(d.header("content-length") == nil || d.header("content-length") == "0")
            let notFound = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(unknownJobID())")
            for (method, path) in [("GET", "/jobs/\(job.id)"), ("GET", "/jobs/\(job.id)/result"), ("DELETE", "/jobs/\(job.id)")] {
                let r = try sendRequest(proxy.port, method: method, path: path)
                #expect(r.status == 404, "\(method) \(path) after delete: \(r.status)")
                if method == "GET" { #expect(wireView(r) == wireView(notFound)) }
            }
            #expect(proxy.server.jobs.table.count == 0)
        }

        // MARK: One 404 for every job the client may not see

        @Test func unknownMalformedAndDeletedIdsGetTheIdentical404() throws {
            let upstream = try FakeUpstream(gated: true)
            upstream.releaseAll()
            let proxy = try jobProxy(upstreamPort: upstream.port)
            let job = try createJob(proxy.port, body: "x")
            _ = try awaitTerminal(proxy.port, job.id)
            #expect(try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(job.id)").status == 204)
            let ids = [unknownJobID(), "abc", "not-an-id!!", String(repeating: "A", count: 23), job.id, "%2e%2e"]
            for suffix in ["", "/result"] {
                var views: [String: String] = [:]
                for id in ids {
                    let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(id)\(suffix)")
                    #expect(r.status == 404, "GET /jobs/\(id)\(suffix): \(r.status)")
                    views[id] = wireView(r)
                }
                let reference = views[ids[0]]!
                for (id, v) in views {
                    #expect(v == reference, "404 for \(id)\(suffix) differs:\n\(v)\n--- vs unknown ---\n\(reference)")
                }
                expectJSONError(try sendRequest(proxy.port, method: "GET", path: "/jobs/\(ids[0])\(suffix)"), status: 404)
            }
            var deletes: [String: String] = [:]
            for id in ids {
                deletes[id] = wireView(try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(id)"))
            }
            #expect(Set(deletes.values).count == 1, "DELETE 404s differ: \(deletes)")
            #expect(upstream.requestCount == 1, "the job path must never be forwarded")
        }

        // MARK: bind_to

        @Test func bindToShowsAJobOnlyToTheSameCredential() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port) { $0.jobs.bindTo = "header:Authorization" }
            defer { upstream.releaseAll() }
            let job = try createJob(proxy.port, headers: ["Authorization: Bearer a"], body: "x")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let mine = try jobStatus(proxy.port, job.id, headers: ["Authorization: Bearer a"])
            #expect(mine.0.status == 200)
            #expect(mine.1.string("job_id") == job.id)

            let unknown = unknownJobID()
            for headers in [["Authorization: Bearer b"], [], ["Authorization: Bearer ab"]] {
                for suffix in ["", "/result"] {
                    let theirs = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)\(suffix)", headers: headers)
                    let none = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(unknown)\(suffix)", headers: headers)
                    #expect(theirs.status == 404, "\(headers) GET \(suffix): \(theirs.status)")
                    #expect(wireView(theirs) == wireView(none), "\(headers): the 404 differs from an unknown job's")
                }
                let del = try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(job.id)", headers: headers)
                #expect(del.status == 404, "\(headers) DELETE: \(del.status)")
            }
            // The other credential's DELETE changed nothing; the owner still sees it running.
            let still = try jobStatus(proxy.port, job.id, headers: ["Authorization: Bearer a"])
            #expect(still.1.string("status") == "running")
            // The upstream still needs the credential: it is forwarded.
            #expect(rawHead(upstream.requests.first ?? [])?.values("authorization") == ["Bearer a"])
            upstream.release()
            let done = try awaitTerminal(proxy.port, job.id, headers: ["Authorization: Bearer a"])
            #expect(done.string("status") == "completed")
            let result = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result", headers: ["Authorization: Bearer a"])
            #expect(result.status == 200)
            #expect(result.text == "done")
        }

        // MARK: result_ttl

        @Test(arguments: jobStores) func resultTTLExpiresTheJob(store: String) throws {
            let upstream = try FakeUpstream(gated: true)
            upstream.releaseAll()
            let proxy = try jobProxy(upstreamPort: upstream.port, store: store) { $0.jobs.resultTTL = .seconds(1) }
            let job = try createJob(proxy.port, body: "x")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed")
            let completedAt = timestampMillis(done.string("completed_at")) ?? 0
            // Visible until the TTL passes.
            #expect(try jobStatus(proxy.port, job.id).0.status == 200)
            #expect(try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result").status == 200)
            var goneAt: Int64 = 0
            #expect(waitUntil(timeout: 5) {
                guard (try? jobStatus(proxy.port, job.id))?.0.status == 404 else { return false }
                goneAt = nowMillis()
                return true
            }, "the job was still there 5 s after completing with result_ttl 1s")
            #expect(goneAt - completedAt >= 950, "expired \(goneAt - completedAt) ms after completion, result_ttl is 1s")
            let gone = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            let unknown = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(unknownJobID())/result")
            #expect(wireView(gone) == wireView(unknown))
            // And it is deleted, not only hidden.
            #expect(waitUntil(timeout: 3) { proxy.server.jobs.table.count == 0 })
            // ...and from the store (its delete may commit a moment after the table's).
            let store = try #require(proxy.server.jobs.store as? any LocalJobStore)
            let jobID = JobID(job.id)!
            #expect(waitUntil(timeout: 3) {
                ((try? store.response(of: jobID)) ?? nil) == nil && (try? store.loadAll())?.contains { $0.id == jobID } == false
            }, "the expired job is still in the store")
        }
    }
}
