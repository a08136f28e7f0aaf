import Config
import Foundation
import Server
import TestSupport
import Testing

/// Keep-alive connections to upstreams: how long they stay in their pools.
/// (The process-level reload test is in ProcessTests.)
@Suite struct UpstreamConnectionTests {
    /// An exchange that outlives its upstream's configuration finishes, and
    /// its keep-alive connection is then closed rather than kept in a pool
    /// no request would ever use again; requests after the reload connect
    /// afresh.
    @Test func anExchangeThatOutlivesAReloadClosesItsUpstreamConnection() throws {
        let upstream = try FakeUpstream(closeAfterReply: false, gated: true,
                                        reply: whenRequestComplete("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let client = try RawClient(port: proxy.port, timeout: 5)
        try client.send("GET /before HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(upstream.waitForRequests(1))

        var next = proxy.configuration
        next.upstreams[0].maxConcurrency = 7
        try proxy.server.reload(next)
        upstream.release()
        #expect(try client.readResponse().text == "ok")
        #expect(upstream.waitForPeerCloses(1, timeout: 3),
                "the old exchange's upstream connection was kept open")

        // The next request goes out on a new connection.
        try client.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(upstream.waitForRequests(2))
        upstream.release()
        #expect(try client.readResponse().text == "ok")
        #expect(upstream.connections == 2)
        #expect(upstream.closedByPeer == 1, "the current upstream's connection stays in its pool")
    }

    /// A pooled connection idle for `limits.idle_timeout` is closed, as an
    /// idle client connection is; one in use is not.
    @Test func idleUpstreamConnectionsAreClosedAfterTheIdleTimeout() throws {
        let upstream = try FakeUpstream(closeAfterReply: false,
                                             reply: whenRequestComplete("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        let proxy = try TestProxy(upstreamPort: upstream.port) { $0.limits.idleTimeout = .seconds(1) }
        // Requests closer together than the timeout keep reusing one connection.
        for i in 0..<3 {
            #expect(try get(proxy.port, "/kept\(i)").text == "ok")
            // The gap is what is tested: 100 ms idle, well under the timeout.
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(upstream.connections == 1)
        #expect(upstream.closedByPeer == 0)
        // Then left idle: closed after the timeout (and at most one sweep, 250 ms).
        #expect(upstream.waitForPeerCloses(1, timeout: 3), "the idle upstream connection was kept open")
        #expect(try get(proxy.port, "/fresh").text == "ok")
        #expect(upstream.connections == 2)
    }
}

extension UpstreamConnectionTests {
    /// A pooled connection the upstream closes as the next request reaches
    /// it (it answered the first and then went away) is stale: a GET is
    /// sent again, whole, on a new connection. (The retry once sent an
    /// empty head, the first attempt having consumed it, and waited for
    /// the sync timeout.)
    @Test func aRequestOnAStalePooledConnectionIsSentAgainWhole() throws {
        let (listener, port) = try bindLoopback(listen: 8)
        let second = Box<[UInt8]?>(nil)
        let ok = Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8)
        @Sendable func readHead(_ c: Int32) -> [UInt8] {
            var got: [UInt8] = [], chunk = [UInt8](repeating: 0, count: 4096)
            while !got.ends(with: Array("\r\n\r\n".utf8)) {
                let n = recv(c, &chunk, chunk.count, 0)
                if n <= 0 { break }
                got += chunk[0..<n]
            }
            return got
        }
        Thread.detachNewThread {
            // First connection: answers one request, then closes when the next arrives.
            let c1 = accept(listener, nil, nil)
            _ = readHead(c1)
            try? sendAll(c1, ok)
            _ = readHead(c1)
            close(c1)
            // The retry's connection.
            let c2 = accept(listener, nil, nil)
            let head = readHead(c2)
            second.withLock { $0 = head }
            try? sendAll(c2, ok)
            _ = readHead(c2)
            close(c2)
            close(listener)
        }
        let proxy = try TestProxy(upstreamPort: port) { $0.upstreams[0].syncTimeout = .seconds(5) }
        #expect(try get(proxy.port, "/one").text == "ok")
        let start = ContinuousClock.now
        #expect(try get(proxy.port, "/two").text == "ok")
        #expect(secondsSince(start) < 2)
        let head = String(decoding: second.withLock { $0 } ?? [], as: UTF8.self)
        #expect(head.hasPrefix("GET /two HTTP/1.1\r\n"), "\(head)")
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix }
}
