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
