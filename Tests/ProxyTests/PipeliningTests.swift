import Config
import Foundation
import TestSupport
import Testing

/// SPEC §6: pipelined requests are answered in order, whatever order the
/// upstream finishes them in.
@Suite struct PipeliningTests {
    @Test func threeRequestsInOneSendComeBackInOrder() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send(
            "GET /sleep?ms=150 HTTP/1.1\r\nHost: a\r\n\r\n"
            + "GET /sleep?ms=10 HTTP/1.1\r\nHost: a\r\n\r\n"
            + "GET /status/201 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        let r1 = try c.readResponse()
        let r2 = try c.readResponse()
        let r3 = try c.readResponse()
        #expect(r1.status == 200)
        #expect(r1.text == "{\"slept_ms\":150}")
        #expect(r2.status == 200)
        #expect(r2.text == "{\"slept_ms\":10}")
        #expect(r3.status == 201)
        #expect(r3.text == "{\"status\":201}")
        #expect(c.waitForClose())
        #expect(c.buffer.isEmpty)
    }

    /// Bodies and bodyless requests mixed in one write: each body ends
    /// exactly where its framing says, and the next request starts there.
    @Test func pipelinedRequestsWithBodiesKeepTheirBoundaries() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send(
            "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nfirst"
            + "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsec\r\n3\r\nond\r\n0\r\n\r\n"
            + "HEAD /status/200 HTTP/1.1\r\nHost: a\r\n\r\n"
            + "GET /status/202 HTTP/1.1\r\nHost: a\r\n\r\n"
            + "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nthird")
        let r1 = try c.readResponse()
        #expect(r1.status == 200)
        #expect(r1.text == "first")
        let r2 = try c.readResponse()
        #expect(r2.status == 200)
        #expect(r2.text == "second")
        let r3 = try c.readResponse(head: true)
        #expect(r3.status == 200)
        #expect(r3.body.isEmpty)
        let r4 = try c.readResponse()
        #expect(r4.status == 202)
        #expect(r4.text == "{\"status\":202}")
        let r5 = try c.readResponse()
        #expect(r5.status == 200)
        #expect(r5.text == "third")
    }
}

/// Keep-alive reuse of the per-connection reader and the pooled exchanges.
@Suite struct KeepAliveReuseTests {
    @Test func methodAndTargetPairsThatLineUpStillRouteCorrectly() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port)
        let c = try RawClient(port: proxy.port)
        for (first, second) in [("GET /status/201", "POST /echo"), ("PUT /status/202", "POST /echo"), ("GET /status/203", "OPTIONS /status/204")] {
            try c.send("\(first) HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            #expect(try c.readResponse().status / 100 == 2)
            try c.send("\(second) HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
            let r = try c.readResponse()
            #expect(r.status / 100 == 2, "\(first) then \(second): \(r.status) \(r.text)")
        }
    }
}

@Suite struct EarlyAnswerTests {
    /// A 404 answered while the request body is still unread announces the
    /// close it is about to make, so the client does not reuse the socket.
    @Test func earlyAnswerSaysConnectionClose() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port) { c in
            c.routes[0].pathPrefix = "/api"
        }
        let c = try RawClient(port: proxy.port)
        try c.send("POST /elsewhere HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\npartial")
        let r = try c.readResponse()
        #expect(r.status == 404)
        #expect(r.header("connection")?.lowercased() == "close")
        #expect(c.waitForClose())
    }
}
