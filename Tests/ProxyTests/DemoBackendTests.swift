import Foundation
import TestSupport
import Testing

/// The demo backend (SPEC §1) is what the quick start and these tests run
/// against: its own responses must be valid HTTP.
@Suite struct DemoBackendTests {
    /// RFC 9110 §15.3.5 / §15.4.5: a 204 or 304 response ends after its head.
    @Test(arguments: [204, 304])
    func statusWithoutContentSendsNoBody(_ code: Int) throws {
        let backend = try InProcessBackend()
        let c = try RawClient(port: backend.port, timeout: 5)
        try c.send("GET /status/\(code) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        #expect(c.waitForClose())
        let head = try #require(rawHead(c.buffer))
        #expect(head.startLine.hasPrefix("HTTP/1.1 \(code)"))
        #expect(c.buffer.count == head.end, "bytes after the \(code) head: \(String(decoding: c.buffer[head.end...], as: UTF8.self))")
        if code == 204 {
            #expect(!head.has("content-length"), "RFC 9110 §8.6: no Content-Length in a 204")
        }
    }

    /// A `/bytes` response whose last chunk takes the output past the
    /// 256 KiB congestion mark still ends, so the keep-alive connection
    /// serves the next request. 262108 bytes: three 64 KiB chunks and a
    /// last one of 65500, which with the ~83-byte head crosses 262144 only
    /// when nothing is left to write.
    @Test func bytesEndingOnCongestionStillEndsTheResponse() throws {
        let backend = try InProcessBackend()
        let c = try RawClient(port: backend.port, timeout: 5)
        let n = 3 * 65536 + 65500
        try c.send("GET /bytes/\(n) HTTP/1.1\r\nHost: a\r\n\r\n")
        let first = try c.readResponse()
        #expect(first.body.count == n)
        try c.send("GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(try c.readResponse().status == 201)
    }

    /// `/bytes/N` streams N bytes however large N is (backpressure, not a stall).
    @Test func bytesStreamsLargeBodiesCompletely() throws {
        let backend = try InProcessBackend()
        let n = 32 << 20
        let c = try StreamingClient(port: backend.port, timeout: 5)
        try c.send(Array("GET /bytes/\(n) HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        let start = ContinuousClock.now
        let head = try c.readHead(deadline: 20, start: start)
        #expect(head.startLine.hasPrefix("HTTP/1.1 200"))
        #expect(try c.readBody(head, deadline: 20, start: start) == Int64(n))
    }
}
