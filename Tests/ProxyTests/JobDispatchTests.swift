import Config
import DemoBackend
import Foundation
import Jobs
import Store
import Proxy
import Server
import TestSupport
import Testing

/// Issue 3 "Dispatch" and SPEC §5: `max_concurrency` never exceeded under
/// many jobs, `max_queued` full is 503 with nothing accepted dropped, and
/// what background requests carry upstream.
extension JobTests {
    @Suite struct Dispatch {
        @Test(arguments: jobStores) func twoHundredConcurrentJobsNeverExceedMaxConcurrency(store: String) throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port, threads: 2, store: store) { $0.upstreams[0].maxConcurrency = 4 }
            let port = proxy.port
            // 10 clients create 20 jobs each, at once.
            let created = try onThreads(10) { t -> [String] in
                var ids: [String] = []
                for i in 0..<20 {
                    guard let job = try? createJob(port, method: "GET", path: "/sleep?ms=20&n=\(t)-\(i)") else { break }
                    ids.append(job.id)
                }
                return ids
            }
            let ids = created.compactMap { $0 }.flatMap { $0 }
            #expect(ids.count == 200, "only \(ids.count) of 200 jobs were accepted")
            #expect(Set(ids).count == ids.count, "duplicate job ids")
            let table = proxy.server.jobs.table
            #expect(waitUntil(timeout: 15) { table.countsByStatus()[.completed] == ids.count },
                    "not all jobs completed: \(table.countsByStatus())")
            // Every job, through the API.
            let c = try RawClient(port: port, timeout: 10)
            var notDone: [String] = []
            for id in ids {
                try c.send("GET /jobs/\(id) HTTP/1.1\r\nHost: test.local\r\n\r\n")
                let r = try c.readResponse()
                let json = jsonObject(r)
                if json?.string("status") != "completed" || json?.object("response")?.int("status") != 200 {
                    notDone.append("\(id): \(r.text)")
                }
            }
            #expect(notDone.isEmpty, "\(notDone.prefix(3))")
            #expect(backend.stats.requests == 200)
            #expect(backend.stats.maxInFlight <= 4, "the upstream saw \(backend.stats.maxInFlight) requests at once")
            #expect(backend.stats.maxInFlight == 4, "max_concurrency 4 was never used in full")
        }

        @Test func fullQueueIs503AndEveryAcceptedJobCompletes() throws {
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port) {
                $0.upstreams[0].maxConcurrency = 1
                $0.upstreams[0].maxQueued = 1
            }
            defer { upstream.releaseAll() }
            let running = try createJob(proxy.port, path: "/1", body: "1")
            #expect(upstream.waitForRequests(1, timeout: 3))
            let queued = try createJob(proxy.port, path: "/2", body: "2")
            #expect(queued.json.string("status") == "queued")
            for n in 3...4 {
                let r = try sendRequest(proxy.port, path: "/\(n)", body: "\(n)")
                expectJSONError(r, status: 503)
                #expect(r.header("retry-after").flatMap { Int($0) }.map { $0 >= 0 } == true, "Retry-After: \(r.header("retry-after") ?? "missing")")
                #expect(r.header("location") == nil)
            }
            #expect(proxy.server.jobs.table.count == 2, "a refused request must not leave a job")
            upstream.releaseAll()
            #expect(try awaitTerminal(proxy.port, running.id).string("status") == "completed")
            #expect(try awaitTerminal(proxy.port, queued.id).string("status") == "completed")
            #expect(upstream.requestLines == ["POST /1 HTTP/1.1", "POST /2 HTTP/1.1"], "\(upstream.requestLines)")
        }

        @Test func burstOverAFullQueueDropsNothingAccepted() throws {
            // Nothing completes until every client has its answer, so the
            // queue only grows while the burst is answered.
            let upstream = try FakeUpstream(gated: true)
            let proxy = try jobProxy(upstreamPort: upstream.port, threads: 2) {
                $0.upstreams[0].maxConcurrency = 1
                $0.upstreams[0].maxQueued = 2
            }
            defer { upstream.releaseAll() }
            let port = proxy.port
            let answers = try onThreads(12) { i -> (Int, String?) in
                guard let r = try? sendRequest(port, path: "/burst/\(i)", body: "\(i)") else { return (-1, nil) }
                return (r.status, jsonObject(r)?.string("job_id"))
            }.compactMap { $0 }
            #expect(answers.count == 12)
            #expect(answers.allSatisfy { $0.0 == 202 || $0.0 == 503 }, "\(answers.map(\.0))")
            let accepted = answers.compactMap { $0.0 == 202 ? $0.1 : nil }
            #expect(accepted.count >= 3, "one running and max_queued 2 must be accepted: \(answers.map(\.0))")
            #expect(answers.contains { $0.0 == 503 }, "12 at once over max_concurrency 1 + max_queued 2 must overflow: \(answers.map(\.0))")
            #expect(proxy.server.jobs.table.count == accepted.count)
            upstream.releaseAll()
            for id in accepted {
                #expect(try awaitTerminal(port, id).string("status") == "completed")
            }
            #expect(upstream.requestCount == accepted.count, "one upstream request per accepted job")
        }

        @Test func backgroundRequestsCarryJobIdAndJobAttempt() throws {
            let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
            let proxy = try jobProxy(upstreamPort: upstream.port)
            let job = try createJob(proxy.port, path: "/work?q=1", headers: ["X-Custom: kept"], body: "abc")
            #expect(try awaitTerminal(proxy.port, job.id).string("status") == "completed")
            guard let head = rawHead(upstream.received) else {
                Issue.record("no request upstream")
                return
            }
            #expect(head.startLine == "POST /work?q=1 HTTP/1.1")
            #expect(head.values("job-id") == [job.id])
            #expect(head.values("job-attempt") == ["1"])
            #expect(head.values("x-custom") == ["kept"])
            #expect(head.values("content-length") == ["3"])
            #expect(Array(upstream.received[head.end...]) == Array("abc".utf8))
        }

        @Test(arguments: jobStores) func requestBodiesAreStoredAndForwardedExactly(store: String) throws {
            let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
            let proxy = try jobProxy(upstreamPort: upstream.port, store: store)
            // 300 KB chunked from the client (beyond any inline threshold).
            let payload: [UInt8] = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ $0 >> 11) }
            var wire = Array("POST /upload HTTP/1.1\r\nHost: test.local\r\nContent-Type: application/x-blob\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".utf8)
            var offset = 0
            for size in [7, 70_000, 1, 100_000, 200_000] {
                let n = min(size, payload.count - offset)
                if n == 0 { break }
                wire += Array("\(String(n, radix: 16))\r\n".utf8) + payload[offset..<offset + n] + Array("\r\n".utf8)
                offset += n
            }
            wire += Array("0\r\n\r\n".utf8)
            let c = try RawClient(port: proxy.port, timeout: 10)
            try c.send(wire)
            let accepted = try c.readResponse()
            #expect(accepted.status == 202, "\(accepted.status) \(accepted.text)")
            guard let id = jsonObject(accepted)?.string("job_id") else { return }
            #expect(try awaitTerminal(proxy.port, id).string("status") == "completed")
            guard let head = rawHead(upstream.received) else {
                Issue.record("no request upstream")
                return
            }
            #expect(head.startLine == "POST /upload HTTP/1.1")
            #expect(head.values("content-length") == ["\(payload.count)"])
            #expect(!head.has("transfer-encoding"))
            #expect(head.values("content-type") == ["application/x-blob"])
            let sent = Array(upstream.received[head.end...])
            #expect(sent.count == payload.count)
            #expect(sent == payload, "the upstream got a different body")
        }

        @Test func clientSuppliedJobIdHeadersDoNotReachTheUpstream() throws {
            let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
            let proxy = try jobProxy(upstreamPort: upstream.port)
            let job = try createJob(proxy.port, headers: ["Job-Id: forged", "Job-Attempt: 7"], body: "x")
            #expect(try awaitTerminal(proxy.port, job.id).string("status") == "completed")
            let head = rawHead(upstream.received)
            // A backend deduplicating by Job-Id must see exactly the job's.
            #expect(head?.values("job-id") == [job.id], "upstream saw Job-Id \(head?.values("job-id") ?? [])")
            #expect(head?.values("job-attempt") == ["1"], "upstream saw Job-Attempt \(head?.values("job-attempt") ?? [])")
        }

        @Test func theJobPathIsNeverForwarded() throws {
            let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
            // A catch-all async route: anything forwarded would reach the upstream.
            let proxy = try jobProxy(upstreamPort: upstream.port)
            let job = try createJob(proxy.port, body: "x")
            #expect(try awaitTerminal(proxy.port, job.id).string("status") == "completed")
            #expect(upstream.connections == 1)
            let probes: [(String, String)] = [
                ("GET", "/jobs"), ("GET", "/jobs/"), ("GET", "/jobs?x=1"), ("POST", "/jobs"),
                ("GET", "/jobs/\(job.id)"), ("GET", "/jobs/\(job.id)/result"), ("HEAD", "/jobs/\(job.id)/result"),
                ("POST", "/jobs/\(job.id)"), ("PUT", "/jobs/\(job.id)/result"), ("GET", "/jobs/\(unknownJobID())"),
                ("GET", "/jobs/\(job.id)/other"),
            ]
            for (method, path) in probes {
                let r = try sendRequest(proxy.port, method: method, path: path, body: method == "GET" || method == "HEAD" ? nil : "b")
                #expect(r.status != 202, "\(method) \(path) became a job")
                #expect(r.header("job-id") == nil || path.hasPrefix("/jobs/\(job.id)"), "\(method) \(path)")
            }
            #expect(upstream.connections == 1, "a job path request reached the upstream")
            #expect(proxy.server.jobs.table.count == 1)
        }
    }
}
