import Config
import DemoBackend
import Foundation
import Store
import Proxy
import Server
import TestSupport
import Testing

/// SPEC §4 `GET {jobs.path}/{id}/result`: the captured upstream response
/// replayed with the same status, end-to-end headers and body bytes, plus
/// `Job-Id`; HEAD works.
extension JobTests {
    @Suite struct Replay {
        @Test(arguments: jobStores) func replays200WithOddHeadersByteExact(store: String) throws {
            // Field lines as the upstream sends them (end-to-end only, so all
            // must come back in order, names byte for byte).
            let fields: [(String, String)] = [
                ("Set-Cookie", "a=1; Path=/"),
                ("X-MiXeD-CaSe", "VaLuE"),
                ("Set-Cookie", "b=2; HttpOnly"),
                ("x-lower", "v"),
                ("X-Spaces", "a  b   c"),
                ("X-Utf8", "caf\u{e9}"),
                ("X-Empty", ""),
                ("Cache-Control", "max-age=60"),
                ("ETag", "\"abc\""),
                ("Date", "Mon, 01 Jan 2001 00:00:00 GMT"),
                ("Content-Type", "text/plain; charset=utf-8"),
            ]
            let body = "hello world"
            var reply = "HTTP/1.1 200 Totally Fine Thanks\r\n"
            for (n, v) in fields { reply += "\(n): \(v)\r\n" }
            reply += "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
            let upstream = try FakeUpstream(reply: whenRequestComplete(reply))
            let proxy = try jobProxy(upstreamPort: upstream.port, store: store)
            let job = try createJob(proxy.port, body: "x")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed")
            #expect(done.object("response")?.int("status") == 200)
            #expect(done.object("response")?.string("content_type") == "text/plain; charset=utf-8")
            #expect(done.object("response")?.int("size") == body.utf8.count)

            // Twice on one keep-alive connection: the replay is repeatable.
            let c = try RawClient(port: proxy.port, timeout: 10)
            for _ in 0..<2 {
                try c.send("GET /jobs/\(job.id)/result HTTP/1.1\r\nHost: test.local\r\n\r\n")
                let r = try c.readResponse()
                #expect(r.startLine == "HTTP/1.1 200 Totally Fine Thanks")
                let endToEnd = r.headers.filter { !["content-length", "job-id"].contains($0.0.lowercased()) }
                #expect(endToEnd.map { "\($0.0): \($0.1)" } == fields.map { "\($0.0): \($0.1)" },
                        "replayed fields:\n\(r.headers.map { "\($0.0): \($0.1)" }.joined(separator: "\n"))")
                #expect(r.headers("content-length") == ["\(body.utf8.count)"])
                #expect(r.headers("job-id") == [job.id])
                #expect(r.headers("cache-control") == ["max-age=60"], "a replay keeps the upstream's caching headers")
                #expect(r.header("connection") == nil, "hop-by-hop Connection from the upstream must not be replayed")
                #expect(r.body == Array(body.utf8))
            }
        }

        @Test func replaysA500AsACompletedJobsResult() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port)
            let job = try createJob(proxy.port, method: "GET", path: "/status/500")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed", "a 500 is a result: \(done)")
            #expect(!done.has("error"))
            #expect(done.object("response")?.int("status") == 500)
            #expect(done.object("response")?.string("content_type") == "application/json")
            #expect(done.object("response")?.int("size") == 14)
            let r = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
            #expect(r.status == 500)
            #expect(r.text == "{\"status\":500}")
            #expect(r.header("content-type") == "application/json")
            #expect(r.header("job-id") == job.id)
            #expect(backend.stats.requests == 1)
        }

        @Test func replaysA204WithoutABody() throws {
            let backend = try InProcessBackend()
            let proxy = try jobProxy(upstreamPort: backend.port)
            let job = try createJob(proxy.port, method: "GET", path: "/status/204")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.object("response")?.int("status") == 204)
            #expect(done.object("response")?.int("size") == 0)
            // On a keep-alive connection, then another request on it: a 204
            // with stray body bytes or a Content-Length would break the next one.
            let c = try RawClient(port: proxy.port, timeout: 10)
            try c.send("GET /jobs/\(job.id)/result HTTP/1.1\r\nHost: test.local\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.startLine.hasPrefix("HTTP/1.1 204"))
            #expect(r.header("content-length") == nil && r.header("transfer-encoding") == nil, "\(r.headers)")
            #expect(r.headers("job-id") == [job.id])
            #expect(r.body.isEmpty)
            try c.send("GET /jobs/\(job.id) HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
            let next = try c.readResponse()
            #expect(next.status == 200)
            #expect(jsonObject(next)?.string("job_id") == job.id)
        }

        @Test(arguments: jobStores) func replaysAChunkedUpstreamResponseWithTheSameBytes(store: String) throws {
            // 200,000 bytes in chunks of odd sizes (beyond any inline threshold).
            let payload: [UInt8] = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
            var wire = Array("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nContent-Type: application/x-thing\r\nX-A: 1\r\n\r\n".utf8)
            var offset = 0
            for size in [1, 10, 4096, 65536, 3, 100_000] + [200_000] {
                let n = min(size, payload.count - offset)
                if n == 0 { break }
                wire += Array("\(String(n, radix: 16));ext=\(size)\r\n".utf8) + payload[offset..<offset + n] + Array("\r\n".utf8)
                offset += n
            }
            wire += Array("0\r\n\r\n".utf8)
            let response = wire
            let upstream = try FakeUpstream { got in isWholeRequest(got) ? response : nil }
            let proxy = try jobProxy(upstreamPort: upstream.port, store: store)
            let job = try createJob(proxy.port, method: "GET", path: "/chunked")
            let done = try awaitTerminal(proxy.port, job.id)
            #expect(done.string("status") == "completed", "\(done)")
            #expect(done.object("response")?.int("size") == payload.count)
            let c = try RawClient(port: proxy.port, timeout: 10)
            try c.send("GET /jobs/\(job.id)/result HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.status == 201)
            #expect(r.reason == "Created")
            #expect(r.header("x-a") == "1")
            #expect(r.header("content-type") == "application/x-thing")
            #expect(r.header("job-id") == job.id)
            #expect(r.body.count == payload.count)
            #expect(r.body == payload, "the replayed body differs from the upstream's de-chunked bytes")
        }

        /// A replay queues the whole spooled body at once, so its exchange is
        /// over while the bytes still go out: a slow reader must get all of
        /// them however long past idle_timeout that takes (it was closed at
        /// idle_timeout, mid-body), with keep-alive and with Connection:
        /// close; a reader that stops reading is closed once nothing moves.
        @Test func aSlowReaderGetsTheWholeResultPastIdleTimeout() throws {
            let (backend, backendPort) = try demoBackendProcess()
            defer { withExtendedLifetime(backend) {} }
            let proxy = try jobProxy(upstreamPort: backendPort) { $0.limits.idleTimeout = .milliseconds(300) }
            // More than the kernel buffers on the way hold (a 64 KiB receive
            // buffer here, the proxy's send buffer at most tcp_wmem's 4 MiB).
            let size = 16 << 20
            let job = try createJob(proxy.port, method: "GET", path: "/bytes/\(size)")
            let done = try awaitTerminal(proxy.port, job.id, seconds: 20)
            #expect(done.string("status") == "completed", "\(done)")

            for close in [false, true] {
                let c = try RawClient(port: proxy.port, timeout: 10)
                var rcvbuf: Int32 = 65536
                setsockopt(c.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, socklen_t(MemoryLayout<Int32>.size))
                try c.send("GET /jobs/\(job.id)/result HTTP/1.1\r\nHost: test.local\r\n\(close ? "Connection: close\r\n" : "")\r\n")
                // About 6 MB/s: some 3 s, ten idle_timeouts.
                let start = ContinuousClock.now
                while c.buffer.count < size && !c.closed {
                    try c.fill()
                    Thread.sleep(forTimeInterval: 0.01)
                }
                let seconds = secondsSince(start)
                let r = try c.readResponse()
                #expect(r.status == 200)
                #expect(r.body.count == size, "Connection: close \(close): \(r.body.count) of \(size) bytes")
                #expect(seconds > 1, "the read took \(seconds) s: not slow enough to test anything")
                if !close {
                    // Still usable after the long transfer, then idle-closed.
                    try c.send("GET /jobs/\(job.id) HTTP/1.1\r\nHost: test.local\r\n\r\n")
                    #expect(try c.readResponse().status == 200)
                    #expect(c.waitForClose(), "the idle connection was not closed")
                } else {
                    #expect(c.waitForClose())
                }
            }

            // A reader that stops: closed once the socket buffers are full and
            // a whole idle_timeout passes without a byte going out.
            let stalled = try RawClient(port: proxy.port, timeout: 10)
            var rcvbuf: Int32 = 65536
            setsockopt(stalled.fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, socklen_t(MemoryLayout<Int32>.size))
            try stalled.send("GET /jobs/\(job.id)/result HTTP/1.1\r\nHost: test.local\r\n\r\n")
            Thread.sleep(forTimeInterval: 2)
            #expect(stalled.waitForClose(), "a reader that stopped reading kept its connection")
            #expect(stalled.buffer.count < size, "the stalled reader got the whole body")
        }

        /// A spooled result goes out with sendfile: replaying 64 MiB twice
        /// leaves the proxy's peak RSS where it was (the file was mapped,
        /// and every byte sent counted in the RSS until the response ended:
        /// a whole result per reader).
        @Test func aReplayDoesNotMapItsFile() throws {
            let (backend, backendPort) = try demoBackendProcess()
            defer { withExtendedLifetime(backend) {} }
            let dir = makeTempDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let path = try writeTempFile("""
                listen: "127.0.0.1:0"
                store: "sqlite:\(dir)/coatcheck.db"
                access_log: off
                jobs: { dir: "\(dir)" }
                upstreams: { app: { url: "http://127.0.0.1:\(backendPort)" } }
                routes: [ { match: { path_prefix: "/" }, upstream: app, mode: async } ]

                """)
            defer { try? FileManager.default.removeItem(atPath: path) }
            let (serve, port, _) = try serveProcess(["--config", path])
            let size = 64 << 20
            let job = try createJob(port, method: "GET", path: "/bytes/\(size)")
            let done = try awaitTerminal(port, job.id, seconds: 30)
            #expect(done.string("status") == "completed", "\(done)")
            // A small replay first (the paths and the allocator warm), then the mark.
            let small = try createJob(port, method: "GET", path: "/bytes/100000")
            _ = try awaitTerminal(port, small.id)
            #expect(try sendRequest(port, method: "GET", path: "/jobs/\(small.id)/result").body.count == 100_000)
            let before = serve.peakRSSKiB
            #expect(before > 0)
            for _ in 0..<2 {
                let r = try sendRequest(port, method: "GET", path: "/jobs/\(job.id)/result", timeout: 30)
                #expect(r.status == 200)
                #expect(r.body.count == size)
            }
            let grew = serve.peakRSSKiB - before
            #expect(grew < 8 * 1024, "replaying 64 MiB raised the proxy's peak RSS by \(grew / 1024) MiB")
        }

        @Test func replaysA50MiBBodyAndHEADGivesItsLength() throws {
            let (backend, backendPort) = try demoBackendProcess()
            defer { withExtendedLifetime(backend) {} }
            let proxy = try jobProxy(upstreamPort: backendPort)
            let size = 52_428_800
            let job = try createJob(proxy.port, method: "GET", path: "/bytes/\(size)")
            let done = try awaitTerminal(proxy.port, job.id, seconds: 20)
            #expect(done.string("status") == "completed", "\(done)")
            #expect(done.object("response")?.int("size") == size)
            #expect(done.object("response")?.string("content_type") == "application/octet-stream")

            let c = try RawClient(port: proxy.port, timeout: 20)
            // HEAD: the head with the body's length, and no body: the status
            // request right behind it on the same connection parses cleanly.
            try c.send("HEAD /jobs/\(job.id)/result HTTP/1.1\r\nHost: test.local\r\n\r\n")
            let head = try c.readResponse(head: true)
            #expect(head.status == 200)
            #expect(head.header("content-length") == "\(size)")
            #expect(head.header("job-id") == job.id)
            try c.send("GET /jobs/\(job.id) HTTP/1.1\r\nHost: test.local\r\n\r\n")
            let status = try c.readResponse()
            #expect(status.status == 200, "after HEAD: \(status.status) \(String(decoding: status.body.prefix(100), as: UTF8.self))")
            #expect(jsonObject(status)?.string("job_id") == job.id)

            try c.send("GET /jobs/\(job.id)/result HTTP/1.1\r\nHost: test.local\r\nConnection: close\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.status == 200)
            #expect(r.header("job-id") == job.id)
            #expect(r.body.count == size)
            // The demo backend's pattern: 64 KiB blocks of (i * 31 + 7) mod 256.
            let pattern: [UInt8] = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            var firstBad: Int?
            r.body.withUnsafeBytes { b in
                pattern.withUnsafeBytes { p in
                    var i = 0
                    while i < b.count {
                        let n = min(p.count, b.count - i)
                        if memcmp(b.baseAddress! + i, p.baseAddress!, n) != 0 { firstBad = i; return }
                        i += n
                    }
                }
            }
            #expect(firstBad == nil, "the body differs from the backend's in the 64 KiB block at \(firstBad ?? -1)")
        }
    }
}
