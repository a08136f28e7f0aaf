import Config
import Foundation
import TestSupport
import Testing

/// SPEC §3 `sync`: responses and request bodies stream through with
/// backpressure, whatever their size (a small, fast cousin of MemoryBoundTests).
@Suite struct StreamingTests {
    static let size = 32 << 20

    @Test func largeResponseStreamsThroughCompletely() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port) { $0.limits.shutdownGrace = .milliseconds(200) }
        let c = try StreamingClient(port: proxy.port, timeout: 5)
        try c.send(Array("GET /bytes/\(Self.size) HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
        let start = ContinuousClock.now
        let head = try c.readHead(deadline: 20, start: start)
        #expect(head.startLine.hasPrefix("HTTP/1.1 200"))
        #expect(try c.readBody(head, deadline: 20, start: start) == Int64(Self.size))
    }

    @Test func largeChunkedUploadIsEchoedCompletely() throws {
        let backend = try InProcessBackend()
        let proxy = try TestProxy(upstreamPort: backend.port) {
            $0.limits.maxRequestBody = 64 << 20
            $0.limits.shutdownGrace = .milliseconds(200)
        }
        let c = try StreamingClient(port: proxy.port, timeout: 5)
        try c.send(Array("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
        let writer = c.startChunkedWriter(total: Int64(Self.size), chunkSize: 256 << 10)
        let start = ContinuousClock.now
        let head = try c.readHead(deadline: 20, start: start)
        #expect(head.startLine.hasPrefix("HTTP/1.1 200"))
        #expect(try c.readBody(head, deadline: 20, start: start) == Int64(Self.size))
        #expect(writer.wait(timeout: 5) == nil)
        #expect(c.sample == Array(StreamingClient.pattern.prefix(c.sample.count)))
    }
}
