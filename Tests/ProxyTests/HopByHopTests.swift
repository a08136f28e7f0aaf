import Foundation
import TestSupport
import Testing

/// SPEC §6: hop-by-hop headers are removed both ways, end-to-end ones pass
/// with their exact values and order, and the X-Forwarded-* trio is set.
@Suite struct HopByHopTests {
    static let hopByHopNames = ["connection", "x-secret", "x-other", "keep-alive", "te", "upgrade", "proxy-connection", "trailer"]

    @Test func requestHopByHopHeadersAreRemovedAndEndToEndOnesKeptInOrder() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send(
            "POST /hop?q=1 HTTP/1.1\r\n"
            + "Host: front.example:8080\r\n"
            + "X-First: 1\r\n"
            + "Connection: keep-alive, x-SECRET\r\n"
            + "X-Secret: 1\r\n"
            + "Keep-Alive: timeout=5\r\n"
            + "Accept: */*\r\n"
            + "TE: trailers\r\n"
            + "Upgrade: websocket\r\n"
            + "Proxy-Connection: keep-alive\r\n"
            + "Trailer: X\r\n"
            + "Connection: X-Other\r\n"
            + "X-Other: 2\r\n"
            + "X-Forwarded-For: 1.2.3.4\r\n"
            + "X-Forwarded-Proto: https\r\n"
            + "X-Forwarded-Host: spoofed.example\r\n"
            + "X-Dup: one\r\n"
            + "X-Spaced:   inner  spaces kept \t\r\n"
            + "x-lower-case: Keep-Alive\r\n"
            + "X-Dup: two\r\n"
            + "Content-Type: text/plain\r\n"
            + "Content-Length: 5\r\n"
            + "\r\nhello")
        let r = try c.readResponse()
        #expect(r.status == 200)

        let got = try #require(rawHead(upstream.received), "upstream got: \(upstream.receivedText)")
        #expect(got.startLine == "POST /hop?q=1 HTTP/1.1")
        for name in HopByHopTests.hopByHopNames {
            #expect(!got.has(name), "\(name) reached the upstream: \(upstream.receivedText)")
        }
        // End-to-end fields: same names (byte for byte), values and order.
        let endToEnd = got.fields.filter {
            !["host", "content-length", "transfer-encoding"].contains($0.name.lowercased())
                && !$0.name.lowercased().hasPrefix("x-forwarded-")
        }
        let want: [(String, String)] = [
            ("X-First", "1"), ("Accept", "*/*"), ("X-Dup", "one"), ("X-Spaced", "inner  spaces kept"),
            ("x-lower-case", "Keep-Alive"), ("X-Dup", "two"), ("Content-Type", "text/plain"),
        ]
        #expect(endToEnd.map(\.name) == want.map(\.0), "upstream got: \(upstream.receivedText)")
        #expect(endToEnd.map(\.value) == want.map(\.1), "upstream got: \(upstream.receivedText)")
        // X-Forwarded-For appended from the socket peer; Proto and Host set (not the client's).
        #expect(got.values("x-forwarded-for").joined(separator: ", ") == "1.2.3.4, 127.0.0.1")
        #expect(got.values("x-forwarded-proto") == ["http"])
        #expect(got.values("x-forwarded-host") == ["front.example:8080"])
        #expect(got.values("content-length") == ["5"])
        #expect(Array(upstream.received[got.end...]) == Array("hello".utf8))
    }

    /// A client X-Forwarded-For followed by other fields: each field stays
    /// its own line, every line of the upstream head is a valid field, and
    /// several X-Forwarded-For fields combine in order with the peer last.
    @Test func clientForwardedForFollowedByOtherFieldsKeepsTheHeadIntact() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let r = try request(proxy.port, "GET /xff HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-After: yes\r\n"
                            + "X-Forwarded-For: 2.2.2.2\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n")
        #expect(r.status == 200)
        let got = try #require(rawHead(upstream.received))
        for f in got.fields {
            #expect(!f.name.isEmpty && !f.name.contains(" ") && !f.name.contains(","),
                    "malformed field line \"\(f.name): \(f.value)\" upstream: \(upstream.receivedText)")
        }
        #expect(got.values("x-after") == ["yes"], "upstream got: \(upstream.receivedText)")
        #expect(got.values("authorization") == ["Bearer t"])
        #expect(got.values("x-forwarded-for").joined(separator: ", ") == "1.1.1.1, 2.2.2.2, 127.0.0.1")
    }

    @Test func forwardedForIsCreatedWhenAbsent() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(okReply))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let r = try get(proxy.port, "/x")
        #expect(r.status == 200)
        let got = try #require(rawHead(upstream.received))
        #expect(got.values("x-forwarded-for") == ["127.0.0.1"])
        #expect(got.values("x-forwarded-proto") == ["http"])
        #expect(got.values("x-forwarded-host") == ["test.local"])
        #expect(!got.has("connection"), "the client's Connection: close is hop-by-hop")
    }

    @Test func responseHopByHopHeadersAreRemovedAndOthersKeptExactly() throws {
        let upstream = try FakeUpstream(reply: whenRequestComplete(
            "HTTP/1.1 200 OK\r\n"
            + "Connection: close, X-Internal\r\n"
            + "X-Internal: 1\r\n"
            + "Keep-Alive: timeout=1\r\n"
            + "X-Odd:  spaced  value  \r\n"
            + "Set-Cookie: a=1; Path=/\r\n"
            + "Proxy-Connection: close\r\n"
            + "Set-Cookie: b=2; Path=/; HttpOnly\r\n"
            + "Upgrade: h2c\r\n"
            + "Trailer: X-T\r\n"
            + "TE: trailers\r\n"
            + "Cache-Control: no-cache, private\r\n"
            + "x-CaSe: MiXeD\r\n"
            + "Content-Length: 5\r\n"
            + "\r\nhello"))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let c = try RawClient(port: proxy.port, timeout: 5)
        try c.send("GET /r HTTP/1.1\r\nHost: a\r\n\r\n")
        let r = try c.readResponse()
        #expect(r.status == 200)
        #expect(r.text == "hello")
        for name in ["x-internal", "keep-alive", "proxy-connection", "upgrade", "trailer", "te"] {
            #expect(r.header(name) == nil, "\(name) reached the client")
        }
        // The proxy may state its own client-side Connection, never the upstream's.
        for value in r.headers("connection") {
            #expect(!value.lowercased().contains("x-internal"), "Connection: \(value)")
        }
        let endToEnd = r.headers.filter {
            !["connection", "content-length", "transfer-encoding", "date", "server", "via"].contains($0.0.lowercased())
        }
        let want: [(String, String)] = [
            ("X-Odd", "spaced  value"), ("Set-Cookie", "a=1; Path=/"), ("Set-Cookie", "b=2; Path=/; HttpOnly"),
            ("Cache-Control", "no-cache, private"), ("x-CaSe", "MiXeD"),
        ]
        #expect(endToEnd.map(\.0) == want.map(\.0), "client got: \(r.headers)")
        #expect(endToEnd.map(\.1) == want.map(\.1), "client got: \(r.headers)")
        // The upstream's "Connection: close" is about its own hop: the
        // client's keep-alive connection stays usable.
        try c.send("GET /again HTTP/1.1\r\nHost: a\r\n\r\n")
        let r2 = try c.readResponse()
        #expect(r2.status == 200)
        #expect(r2.text == "hello")
        #expect(upstream.connections == 2)
    }
}
