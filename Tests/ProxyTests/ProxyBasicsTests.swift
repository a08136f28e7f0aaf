import Config
import Foundation
import TestSupport
import Testing

@Suite struct ProxyBasicsTests {
    @Test func passesThroughToDemoBackend() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port)
        let r = try get(proxy.port, "/status/201")
        #expect(r.status == 201)
        #expect(r.text == "{\"status\":201}")
        let slept = try get(proxy.port, "/sleep?ms=20")
        #expect(slept.status == 200)
    }

    @Test func echoesBodiesByteExact() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port)
        var body = [UInt8](repeating: 0, count: 3_000_000)
        for i in body.indices { body[i] = UInt8(truncatingIfNeeded: i &* 7919 &+ i >> 9) }
        // Content-Length body.
        let c = try RawClient(port: proxy.port)
        try c.send("POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-odd\r\nContent-Length: \(body.count)\r\n\r\n")
        try c.send(body)
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(r.body == body)
        #expect(r.header("content-type") == "application/x-odd")
        // Chunked body, on the same keep-alive connection.
        try c.send("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        var offset = 0
        while offset < body.count {
            let n = min(100_003, body.count - offset)
            try c.send(Array(String(n, radix: 16).utf8) + Array("\r\n".utf8) + Array(body[offset..<offset + n]) + Array("\r\n".utf8))
            offset += n
        }
        try c.send("0\r\n\r\n")
        let r2 = try c.readResponse()
        #expect(r2.status == 200)
        #expect(r2.header("transfer-encoding") == "chunked")
        #expect(r2.body == body)
    }

    @Test func noRouteIs404JSONAndNothingForwarded() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
        let proxy = try TestProxy(upstreamPort: upstream.port) { c in
            var r = Route(upstream: "app")
            r.pathPrefix = "/api"
            r.methods = ["POST"]
            var h = Route(upstream: "app")
            h.pathPrefix = "/"
            h.host = "only.example"
            c.routes = [r, h]
        }
        let miss = try get(proxy.port, "/api/x")
        #expect(miss.status == 404)
        #expect(miss.header("content-type") == "application/json")
        #expect(miss.text.contains("\"code\":\"no_route\""))
        let jobs = try get(proxy.port, "/jobs/abc")
        #expect(jobs.status == 404)
        let hit = try request(proxy.port, "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        #expect(hit.status == 200)
        let hostHit = try request(proxy.port, "GET /z HTTP/1.1\r\nHost: ONLY.example:8080\r\nConnection: close\r\n\r\n")
        #expect(hostHit.status == 200)
        #expect(upstream.connections == 2)
        #expect(!upstream.receivedText.contains("/jobs"))
        #expect(!upstream.receivedText.contains("GET /api/x"))
    }
}
