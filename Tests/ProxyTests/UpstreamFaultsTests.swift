import Config
import Foundation
import TestSupport
import Testing

/// SPEC §6 upstream faults: refused 502, sync timeout 504, broken or
/// truncated responses 502, and once the head was relayed the client
/// connection closes before the message completes.
@Suite struct UpstreamFaultsTests {
    @Test func refusedUpstreamIs502Unreachable() throws {
        let proxy = try TestProxy(upstreamPort: try closedPort())
        let r = try get(proxy.port, "/x")
        expectJSONError(r, status: 502, code: "upstream_unreachable")
    }

    @Test func syncTimeoutIs504() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port) { $0.upstreams[0].syncTimeout = .milliseconds(300) }
        let start = ContinuousClock.now
        let r = try get(proxy.port, "/sleep?ms=5000")
        let elapsed = secondsSince(start)
        expectJSONError(r, status: 504)
        #expect(elapsed >= 0.25 && elapsed < 2, "504 after \(elapsed)s, sync_timeout is 300ms")
        // The timeout gave the slot back and nothing is wedged: a quick request passes.
        #expect(try get(proxy.port, "/status/200").status == 200)
    }

    /// A response that breaks after its head may reach the client: the
    /// client must then see the connection close before the message is
    /// whole (or, if the head was never relayed, get a 502).
    func brokenResponse(_ reply: String, closeAfterReply: Bool = true) throws
        -> (upstream: FakeUpstream, client: RawClient, proxy: TestProxy) {
        let upstream = try FakeUpstream(closeAfterReply: closeAfterReply, reply: whenRequestComplete(reply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("GET /t HTTP/1.1\r\nHost: a\r\n\r\n")
        var whole: Response?
        do { whole = try c.readResponse() } catch {}
        if let whole {
            expectJSONError(whole, status: 502)
        } else {
            #expect(c.closed, "the client connection must be closed, not left hanging")
        }
        return (upstream, c, proxy)
    }

    @Test func truncatedContentLengthBodyClosesTheClientBeforeTheMessageCompletes() throws {
        let (_, c, _) = try brokenResponse("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        #expect(c.buffer.count < 100 + 20, "got \(c.buffer.count) bytes")
    }

    @Test func truncatedChunkedBodyClosesTheClientBeforeTheMessageCompletes() throws {
        _ = try brokenResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    }

    @Test func badChunkFromUpstreamAfterTheHeadClosesTheClient() throws {
        let (upstream, c, proxy) = try brokenResponse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
            closeAfterReply: false)
        #expect(!String(decoding: c.buffer, as: UTF8.self).contains("more"))
        // The proxy still runs: it closed the broken connection itself.
        withExtendedLifetime(proxy) {
            #expect(upstream.wait(timeout: 3) { $0.closedByPeer >= 1 }, "the broken upstream connection must be closed")
        }
    }

    static let malformedResponses: [String] = [
        "HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",
        "HTTX/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        "garbage\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nX-A: one\r\n two\r\nContent-Length: 2\r\n\r\nok",
        "HTTP/1.1 200 OK\r\nX-A: o\u{0}ne\r\nContent-Length: 2\r\n\r\nok",
    ]

    @Test(arguments: malformedResponses)
    func malformedResponseIs502BadResponse(_ response: String) throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(response))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let r = try get(proxy.port, "/m")
        expectJSONError(r, status: 502, code: "upstream_bad_response")
    }

    @Test func unframedHTTP11ResponseClosedAfterItsBodyIs502() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthis body has no framing"))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("GET /u HTTP/1.1\r\nHost: a\r\n\r\n")
        var whole: Response?
        do { whole = try c.readResponse() } catch {}
        if let whole {
            expectJSONError(whole, status: 502)
        } else {
            // The head was relayed after all: then the client must see the truncation.
            #expect(c.closed)
            Issue.record("an unframed HTTP/1.1 response was relayed instead of answered with 502")
        }
    }

    @Test func closeDelimitedHTTP10ResponseIsRelayed() throws {
        var body = ""
        for i in 0..<30_000 { body += "line \(i)\n" } // ~250 KB: more than one read
        let upstream = try FakeUpstream(reply: whenRequestComplete(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + body))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("GET /old HTTP/1.1\r\nHost: a\r\n\r\n")
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(r.header("content-type") == "text/plain")
        #expect(r.body.count == body.utf8.count)
        #expect(r.text == body)
        // Also to an HTTP/1.0 client (close-delimited both ways).
        let c10 = try RawClient(port: proxy.port, timeout: 5)
        try c10.send("GET /old HTTP/1.0\r\nHost: a\r\n\r\n")
        let r10 = try c10.readResponse()
        #expect(r10.status == 200)
        #expect(r10.text == body)
    }

    /// Bytes an upstream sends past the end of a response must never be
    /// taken as the response to the next request reusing that connection
    /// (response queue poisoning): such a connection is not reused.
    @Test func bytesAfterACompleteResponseAreNeverServedToTheNextRequest() throws {
        let upstream = try FakeUpstream(closeAfterReply: false, reply: whenRequestComplete(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            + "HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Forged: 1\r\n\r\nforged"))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        for i in 0..<3 {
            try c.send("GET /r\(i) HTTP/1.1\r\nHost: a\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.status == 200, "request \(i): \(r.status) \(r.text)")
            #expect(r.text == "ok", "request \(i) got the bytes left over from the previous response")
            #expect(r.header("x-forged") == nil)
        }
    }

    /// A 204 has no body whatever its Content-Length says (RFC 9110 §6.4.1):
    /// nothing follows the head to the client, and the stray bytes do not
    /// leak into the next response.
    @Test func bodyOnA204FromTheUpstreamIsNeitherRelayedNorReused() throws {
        let upstream = try FakeUpstream(closeAfterReply: false, reply: whenRequestComplete(
            "HTTP/1.1 204 No Content\r\nContent-Length: 14\r\n\r\n{\"status\":204}"))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        for i in 0..<3 {
            try c.send("GET /n\(i) HTTP/1.1\r\nHost: a\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.status == 204, "request \(i): \(r.status) \(r.text)")
            #expect(r.body.isEmpty)
        }
        // A negative check: stray bytes get 100 ms to arrive (the receive
        // returns at the first one).
        c.setTimeout(0.1)
        _ = try? c.fill()
        #expect(c.buffer.isEmpty, "bytes after the 204 reached the client: \(String(decoding: c.buffer, as: UTF8.self))")
    }

    @Test func upstreamClosingWithoutAnyResponseIs502() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(""))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let r = try get(proxy.port, "/gone")
        expectJSONError(r, status: 502)
    }
}
