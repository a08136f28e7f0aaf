import Foundation
import TestSupport
import Testing

/// One hostile request and what the proxy must answer (SPEC §6).
struct SmuggleCase: Sendable, CustomTestStringConvertible {
    let name: String
    let bytes: [UInt8]
    /// Acceptable statuses: one, except where SPEC leaves 400 vs 501 open.
    let statuses: Set<Int>

    init(_ name: String, _ text: String, _ statuses: Set<Int> = [400]) {
        self.name = name
        self.bytes = Array(text.utf8)
        self.statuses = statuses
    }

    init(_ name: String, bytes: [UInt8], _ statuses: Set<Int> = [400]) {
        self.name = name
        self.bytes = bytes
        self.statuses = statuses
    }

    var testDescription: String { name }
}

/// The request-smuggling corpus (issue "The engine", SPEC §6), sent to the
/// proxy's socket with a FakeUpstream behind it. Every head error must
/// be answered by the proxy itself (400, or 501 for an unknown
/// Transfer-Encoding) with the JSON error body, the connection must close,
/// and the upstream must receive nothing at all.
@Suite struct SmugglingTests {
    /// A request smuggled behind the first one: if any byte of the input
    /// reached the upstream this path would show up there.
    static let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"

    static let headCases: [SmuggleCase] = [
        // Framing.
        .init("Content-Length and Transfer-Encoding",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\(smuggled)"),
        .init("Transfer-Encoding then Content-Length",
              "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n\(smuggled)"),
        .init("Transfer-Encoding with a space before the colon",
              "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n\(smuggled)"),
        .init("Transfer-Encoding: chunked, gzip",
              "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n\(smuggled)", [501]),
        .init("Transfer-Encoding: xchunked",
              "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n\(smuggled)", [501]),
        .init("Transfer-Encoding: gzip",
              "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n\(smuggled)", [501]),
        .init("Transfer-Encoding: gzip, chunked",
              "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n\(smuggled)", [501]),
        .init("Transfer-Encoding twice",
              "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\(smuggled)",
              [400, 501]),
        .init("Transfer-Encoding on HTTP/1.0",
              "POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\(smuggled)"),
        .init("duplicate identical Content-Length",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc\(smuggled)"),
        .init("duplicate differing Content-Length",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc\(smuggled)"),
        .init("Content-Length list 3, 3",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc\(smuggled)"),
        .init("Content-Length +3",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc\(smuggled)"),
        .init("Content-Length -3",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc\(smuggled)"),
        .init("Content-Length 0x3",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc\(smuggled)"),
        .init("Content-Length 1 2",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nabc\(smuggled)"),
        .init("empty Content-Length",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nabc\(smuggled)"),
        .init("Content-Length with a space before the colon",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc\(smuggled)"),
        // Field syntax.
        .init("bare CR in a value", "GET /a HTTP/1.1\r\nHost: a\r\nX-A: one\rX-B: two\r\n\r\n"),
        .init("NUL in a value", bytes: Array("GET /a HTTP/1.1\r\nHost: a\r\nX-A: one".utf8) + [0] + Array("two\r\n\r\n".utf8)),
        .init("obs-fold with a space", "GET /a HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n"),
        .init("obs-fold with a tab", "GET /a HTTP/1.1\r\nHost: a\r\nX-A: one\r\n\ttwo\r\n\r\n"),
        .init("obs-fold of Transfer-Encoding",
              "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding:\r\n chunked\r\n\r\nabc\(smuggled)"),
        .init("empty header name", "GET /a HTTP/1.1\r\nHost: a\r\n: value\r\n\r\n"),
        .init("space in a header name", "GET /a HTTP/1.1\r\nHost: a\r\nX A: value\r\n\r\n"),
        .init("non-token header name", "GET /a HTTP/1.1\r\nHost: a\r\nX(A): value\r\n\r\n"),
        .init("header line without a colon", "GET /a HTTP/1.1\r\nHost: a\r\nX-A value\r\n\r\n"),
        // Host.
        .init("missing Host on HTTP/1.1", "GET /a HTTP/1.1\r\nX-A: b\r\n\r\n"),
        .init("duplicate identical Host", "GET /a HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"),
        .init("duplicate differing Host", "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        .init("Host with a path and userinfo", "GET /a HTTP/1.1\r\nHost: a/b@c\r\n\r\n"),
        // Request target.
        .init("space in the target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
        .init("tab in the target", "GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n"),
        .init("control byte 0x01 in the target", bytes: Array("GET /a".utf8) + [0x01] + Array("b HTTP/1.1\r\nHost: a\r\n\r\n".utf8)),
        .init("DEL in the target", bytes: Array("GET /a".utf8) + [0x7F] + Array("b HTTP/1.1\r\nHost: a\r\n\r\n".utf8)),
        .init("HTTX instead of HTTP in the request line", "GET /a HTTX/1.1\r\nHost: a\r\n\r\n", [400, 505]),
        .init("absolute-form to a foreign host", "GET http://evil.example/a HTTP/1.1\r\nHost: a\r\n\r\n"),
        .init("absolute-form to a foreign host with the right port",
              "GET http://evil.example:80/a HTTP/1.1\r\nHost: a:80\r\n\r\n"),
        // Found by Scripts/differential.
        .init("a bare CR before the request line", "\rGET /a HTTP/1.1\r\nHost: a\r\n\r\n"),
        .init("a bare CR after an empty line", "\r\n\rGET /a HTTP/1.1\r\nHost: a\r\n\r\n"),
        .init("two spaces after the method", "GET  /a HTTP/1.1\r\nHost: a\r\n\r\n"),
    ]

    @Test(arguments: headCases)
    func headErrorIsRefusedAndNothingReachesTheUpstream(_ c: SmuggleCase) throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let client = try RawClient(port: proxy.port, timeout: 5)
        try client.send(c.bytes)
        let r = try client.readResponse()
        #expect(c.statuses.contains(r.status), "status \(r.status), want \(c.statuses.sorted())")
        expectJSONError(r)
        #expect(r.header("connection")?.lowercased() == "close")
        #expect(client.waitForClose(), "the proxy must close the connection after a framing error")
        // Nothing may reach the upstream: a negative check, so a bounded
        // window (50 ms) for a wrongly forwarded head to arrive in.
        _ = upstream.wait(timeout: 0.05) { $0.connections > 0 || !$0.received.isEmpty }
        #expect(upstream.connections == 0)
        #expect(upstream.received.isEmpty, "upstream got: \(upstream.receivedText)")
    }

    /// The control: the same harness sees a valid request arrive, so "nothing
    /// reached the upstream" above is not an artefact of the setup.
    @Test func validRequestsOfTheSameShapeAreForwarded() throws {
        // The upstream closes after each reply, and says so: a connection it
        // is about to close must not be pooled (a POST on one would fail).
        let upstream = try FakeUpstream(reply: whenRequestComplete("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let r1 = try request(proxy.port, "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        #expect(r1.status == 200)
        let r2 = try request(proxy.port, "POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        #expect(r2.status == 200)
        let r3 = try request(proxy.port, "GET http://a/abs HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        #expect(r3.status == 200)
        #expect(upstream.connections == 3)
        #expect(upstream.receivedText.contains("GET /abs HTTP/1.1\r\n"))
    }

    /// Request forms the RFC admits that the proxy refused or could not
    /// route before Scripts/differential found them: a CRLF before the
    /// request line (RFC 9112 §2.2), absolute-form without a path (its path
    /// is "/", RFC 9110 §4.2.3), `OPTIONS *`. They reach the catch-all route.
    @Test func requestFormsWithoutAPathAreForwarded() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let cases = [
            ("\r\n\nGET /lead HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET /lead HTTP/1.1\r\n"),
            ("GET http://a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET / HTTP/1.1\r\n"),
            ("GET http://a?q=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "GET /?q=1 HTTP/1.1\r\n"),
            ("OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", "OPTIONS * HTTP/1.1\r\n"),
        ]
        for (text, line) in cases {
            let before = upstream.received.count
            let r = try request(proxy.port, text)
            #expect(r.status == 200, "\(text.debugDescription)")
            #expect(upstream.wait(timeout: 3) { $0.received.count > before })
            let got = String(decoding: upstream.received.dropFirst(before), as: UTF8.self)
            #expect(got.hasPrefix(line), "upstream got: \(got)")
        }
    }

    /// A malformed trailer field (RFC 9112 §7.1.2: field lines, like the
    /// head's) ends the request like a bad chunk: 400, the upstream
    /// connection closed, never a complete body upstream.
    @Test(arguments: ["X-T v", "X-T : v", ": v", "\tX-T: v"])
    func badTrailerClosesTheUpstreamAndAnswers400(_ trailer: String) throws {
        try expectBodyRefused("3\r\nabc\r\n0\r\n\(trailer)\r\n\r\n")
    }

    static let badChunkSizes = ["0x3", "+3", "-1", "ffffffffffffffffffff", "g"]

    /// A valid head with a bad chunk after it: the head may already be
    /// upstream, so the upstream connection must be closed (never completed
    /// as a request, never reused) and the client gets 400 and a close.
    @Test(arguments: badChunkSizes)
    func badChunkSizeClosesTheUpstreamAndAnswers400(_ size: String) throws {
        let upstream = try expectBodyRefused("\(size)\r\nabc\r\n0\r\n\r\n")
        #expect(!upstream.receivedText.contains("abc"))
    }

    /// Sends a valid chunked head, then `body` (which must be refused) and a
    /// smuggled request after it. The head may already be upstream, so the
    /// upstream connection must be closed (never completed as a request,
    /// never reused); the client gets 400 and a close. Returns the upstream
    /// for further checks.
    @discardableResult
    private func expectBodyRefused(_ body: String) throws -> FakeUpstream {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let client = try RawClient(port: proxy.port, timeout: 5)
        try client.send("POST /chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        // The head may be forwarded before the body: let it get there if it will.
        _ = upstream.waitForReceived(timeout: 0.5) { rawHead($0) != nil }
        try client.send(body + SmugglingTests.smuggled)
        let r = try client.readResponse()
        expectJSONError(r, status: 400)
        #expect(client.waitForClose(), "the proxy must close the client connection after a bad body")
        if upstream.connections > 0 {
            #expect(upstream.wait(timeout: 3) { $0.closedByPeer >= $0.connections },
                    "the upstream connection must be closed, not left open or reused")
        }
        #expect(!hasCompleteChunkedBody(upstream.received), "the upstream saw a complete body: \(upstream.receivedText)")
        #expect(!upstream.receivedText.contains("/smuggled"))
        return upstream
    }

    /// A bad chunk that arrives in the same bytes as its head is found
    /// before anything goes upstream (SPEC §6), even when a pooled
    /// connection is ready to take the head at once.
    @Test(arguments: badChunkSizes)
    func badChunkSentWithTheHeadNeverReachesTheUpstream(_ size: String) throws {
        let upstream = try FakeUpstream(closeAfterReply: false, reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        // Warm the pool: the next request could be written at once.
        let warm = try RawClient(port: proxy.port, timeout: 5)
        try warm.send("GET /warm HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(try warm.readResponse().status == 200)
        let before = upstream.received
        let client = try RawClient(port: proxy.port, timeout: 5)
        try client.send("POST /chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\(size)\r\nabc\r\n0\r\n\r\n")
        let r = try client.readResponse()
        expectJSONError(r, status: 400)
        #expect(client.waitForClose())
        // A wrongly forwarded head would be on the pooled connection by now;
        // the good request after it proves the pool is still in use.
        try warm.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(try warm.readResponse().status == 200)
        let after = String(decoding: upstream.received.dropFirst(before.count), as: UTF8.self)
        #expect(after.hasPrefix("GET /after HTTP/1.1\r\n"), "upstream got: \(after)")
        #expect(!upstream.receivedText.contains("/chunks"))
    }

    /// Chunk data longer than its size line: the bytes within the size may be
    /// streamed on, but the request must never look complete upstream.
    @Test func chunkDataOverrunningItsSizeIsRefused() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let client = try RawClient(port: proxy.port, timeout: 3)
        try client.send("POST /chunks HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        _ = upstream.waitForReceived(timeout: 0.5) { rawHead($0) != nil }
        try client.send("3\r\nabcdef\r\n0\r\n\r\n\(SmugglingTests.smuggled)")
        let r: Response
        do {
            r = try client.readResponse()
        } catch {
            Issue.record("no 400: the proxy took the bytes after the chunk data for its CRLF and waits for more body (\(error)); upstream got: \(upstream.receivedText)")
            return
        }
        expectJSONError(r, status: 400)
        #expect(client.waitForClose())
        if upstream.connections > 0 {
            #expect(upstream.wait(timeout: 3) { $0.closedByPeer >= $0.connections })
        }
        #expect(!hasCompleteChunkedBody(upstream.received), "upstream got: \(upstream.receivedText)")
        #expect(!upstream.receivedText.contains("/smuggled"))
    }
}
