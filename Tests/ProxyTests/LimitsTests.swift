import Config
import Foundation
import TestSupport
import Testing

/// SPEC §2 `limits:`: sizes answer 431/414/413, timers answer 408 and close,
/// idle keep-alive connections close, max_connections refuses the excess.
@Suite struct LimitsTests {
    // MARK: Sizes

    @Test func headOverMaxHeaderBytesIs431() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port) { $0.limits.maxHeaderBytes = 1024 }
        // Control: a head under the limit passes.
        let under = try get(proxy.port, "/ok", headers: "X-Pad: \(String(repeating: "p", count: 700))\r\n")
        #expect(under.status == 200)
        #expect(upstream.connections == 1)

        // One big field.
        let c1 = try RawClient(port: proxy.port, timeout: 5)
        try c1.send("GET /big HTTP/1.1\r\nHost: a\r\nX-Big: \(String(repeating: "b", count: 1500))\r\n\r\n")
        let r1 = try c1.readResponse()
        expectJSONError(r1, status: 431)
        #expect(c1.waitForClose())
        // Many small fields adding up.
        let c2 = try RawClient(port: proxy.port, timeout: 5)
        let many = (0..<200).map { "X-F\($0): v\r\n" }.joined()
        try c2.send("GET /many HTTP/1.1\r\nHost: a\r\n\(many)\r\n")
        let r2 = try c2.readResponse()
        expectJSONError(r2, status: 431)
        #expect(c2.waitForClose())
        // A negative check: a bounded window (50 ms) for a wrongly forwarded head.
        _ = upstream.wait(timeout: 0.05) { $0.connections > 1 }
        #expect(upstream.connections == 1, "an oversized head must not be forwarded")
        #expect(!upstream.receivedText.contains("/big") && !upstream.receivedText.contains("/many"))
    }

    @Test func longTargetIs414() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        // Control: a long but acceptable target arrives intact.
        let okPath = "/" + String(repeating: "a", count: 4000) + "?q=" + String(repeating: "z", count: 100)
        let ok = try get(proxy.port, okPath)
        #expect(ok.status == 200)
        #expect(rawHead(upstream.received)?.startLine == "GET \(okPath) HTTP/1.1")

        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("GET /\(String(repeating: "t", count: 40_000)) HTTP/1.1\r\nHost: a\r\n\r\n")
        let r = try c.readResponse()
        expectJSONError(r, status: 414)
        #expect(c.waitForClose())
        // A negative check: a bounded window (50 ms) for a wrongly forwarded head.
        _ = upstream.wait(timeout: 0.05) { $0.connections > 1 }
        #expect(upstream.connections == 1)
    }

    @Test func contentLengthOverMaxRequestBodyIs413BeforeAnythingIsForwarded() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port) { $0.limits.maxRequestBody = 1024 }
        // Control: exactly the limit passes.
        let atLimit = try request(proxy.port, "POST /ok HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n"
                                  + String(repeating: "x", count: 1024))
        #expect(atLimit.status == 200)
        #expect(upstream.connections == 1)

        let c = try RawClient(port: proxy.port, timeout: 5)
        // The head alone: the answer must not wait for a body it will refuse.
        try c.send("POST /over HTTP/1.1\r\nHost: a\r\nContent-Length: 1025\r\n\r\n")
        let r = try c.readResponse()
        expectJSONError(r, status: 413)
        #expect(c.waitForClose())
        // A negative check: a bounded window (50 ms) for a wrongly forwarded head.
        _ = upstream.wait(timeout: 0.05) { $0.connections > 1 }
        #expect(upstream.connections == 1)
        #expect(!upstream.receivedText.contains("/over"))
    }

    @Test func chunkedBodyGrowingPastMaxRequestBodyIs413AndTheUpstreamIsCutOff() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port) { $0.limits.maxRequestBody = 1024 }
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("POST /grow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        let chunk = "258\r\n" + String(repeating: "g", count: 600) + "\r\n"
        try c.send(chunk)
        _ = upstream.waitForReceived(timeout: 0.5) { rawHead($0) != nil }
        try? c.send(chunk + chunk + "0\r\n\r\n")
        let r = try c.readResponse()
        expectJSONError(r, status: 413)
        #expect(c.waitForClose())
        if upstream.connections > 0 {
            #expect(upstream.wait(timeout: 3) { $0.closedByPeer >= $0.connections },
                    "the upstream connection must be closed")
        }
        #expect(!hasCompleteChunkedBody(upstream.received), "a cut-off body must not look complete upstream")
        if let head = rawHead(upstream.received) {
            let forwarded = decodeChunked(upstream.received[head.end...])?.body.count ?? 0
            #expect(forwarded <= 1024, "forwarded \(forwarded) body bytes past max_request_body")
        }
    }

    // MARK: Timers

    /// header_timeout is a total: a client trickling one byte every 100 ms
    /// (never idle for long) is still cut off at the deadline.
    @Test func tricklingHeadIsCutOffAtHeaderTimeoutWith408() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port) { $0.limits.headerTimeout = .milliseconds(500) }
        let c = try RawClient(port: proxy.port, timeout: 5)
        let head = Array("GET /slow HTTP/1.1\r\nHost: a\r\nX-Trickle: ".utf8) + Array(repeating: UInt8(ascii: "t"), count: 100)
        let start = ContinuousClock.now
        let elapsed = try trickle(head, to: c, every: 0.1, giveUpAfter: 4)
        let r = try c.readResponse()
        expectJSONError(r, status: 408)
        #expect(elapsed >= 0.4, "cut off after \(elapsed)s, before the 500ms header_timeout")
        #expect(elapsed <= 2.0, "cut off after \(elapsed)s, long past the 500ms header_timeout")
        #expect(c.waitForClose())
        #expect(secondsSince(start) < 4)
        #expect(upstream.connections == 0)
    }

    /// body_timeout is a total too, and the upstream exchange is abandoned.
    @Test func tricklingBodyIsCutOffAtBodyTimeoutWith408() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port) { $0.limits.bodyTimeout = .milliseconds(500) }
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        let elapsed = try trickle(Array(repeating: UInt8(ascii: "b"), count: 100), to: c, every: 0.1, giveUpAfter: 4)
        let r = try c.readResponse()
        expectJSONError(r, status: 408)
        #expect(elapsed >= 0.4, "cut off after \(elapsed)s, before the 500ms body_timeout")
        #expect(elapsed <= 2.0, "cut off after \(elapsed)s, long past the 500ms body_timeout")
        #expect(c.waitForClose())
        if upstream.connections > 0 {
            #expect(upstream.wait(timeout: 3) { $0.closedByPeer >= $0.connections })
        }
    }

    /// Sends `bytes` one per `interval` until a response byte or EOF arrives;
    /// returns the seconds from the first byte to that moment.
    private func trickle(_ bytes: [UInt8], to c: RawClient, every interval: Double, giveUpAfter limit: Double) throws -> Double {
        let start = ContinuousClock.now
        c.setTimeout(interval)
        defer { c.setTimeout(5) }
        var sent = 0
        while secondsSince(start) < limit {
            if sent < bytes.count {
                do { try c.send([bytes[sent]]) } catch { sent = bytes.count } // the proxy closed: stop sending
                sent += 1
            }
            if (try? c.fill()) != nil { return secondsSince(start) } // a response byte, or EOF
        }
        throw TestError("no answer within \(limit)s")
    }

    @Test func idleKeepAliveConnectionIsClosedAfterIdleTimeout() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port) { $0.limits.idleTimeout = .milliseconds(500) }
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(try c.readResponse().status == 200)
        // Not closed early: still usable 200 ms later.
        Thread.sleep(forTimeInterval: 0.2)
        try c.send("GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(try c.readResponse().status == 201)
        let idleSince = ContinuousClock.now
        #expect(c.waitForClose(), "the idle connection was not closed")
        let idle = secondsSince(idleSince)
        #expect(idle >= 0.4 && idle <= 2.0, "closed after \(idle)s idle, idle_timeout is 500ms")
        #expect(c.buffer.isEmpty, "nothing may be sent on an idle close: \(String(decoding: c.buffer, as: UTF8.self))")
    }

    // MARK: Connections

    @Test func maxConnectionsRefusesTheExcessAndServesTheOthers() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port) { $0.limits.maxConnections = 2 }
        let c1 = try RawClient(port: proxy.port, timeout: 5)
        let c2 = try RawClient(port: proxy.port, timeout: 5)
        for c in [c1, c2] {
            try c.send("GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
            #expect(try c.readResponse().status == 200)
        }
        // The third: refused at connect, or accepted and closed unanswered.
        if let c3 = try? RawClient(port: proxy.port, timeout: 3) {
            try? c3.send("GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
            #expect(c3.waitForClose(), "a third connection was kept open")
            #expect(c3.buffer.isEmpty, "a third connection was served: \(String(decoding: c3.buffer, as: UTF8.self))")
        }
        // The first two are still served.
        for c in [c1, c2] {
            try c.send("GET /status/202 HTTP/1.1\r\nHost: a\r\n\r\n")
            #expect(try c.readResponse().status == 202)
        }
        // A freed slot is available again.
        try c1.send("GET /status/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        #expect(try c1.readResponse().status == 200)
        #expect(c1.waitForClose())
        let servedAgain = waitUntil(timeout: 3) { (try? statusOnNewConnection(proxy.port, "/status/203")) == 203 }
        #expect(servedAgain, "after one of two connections closed, a new one was not served")
    }
}

/// The status of one GET on a fresh keep-alive connection.
func statusOnNewConnection(_ port: Int, _ path: String, timeout: Double = 1) throws -> Int {
    let c = try RawClient(port: port, timeout: timeout)
    try c.send("GET \(path) HTTP/1.1\r\nHost: a\r\n\r\n")
    return try c.readResponse().status
}
