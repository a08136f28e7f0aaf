import Config
import Foundation
import Server
import Testing

/// Reloads (SIGHUP) swap routes and upstreams under running exchanges; the
/// process-level reload test is in ProcessTests.
@Suite struct ReloadTests {
    /// An exchange that outlives its upstream's configuration finishes, and
    /// its keep-alive connection is then closed rather than kept in a pool
    /// no request would ever use again; requests after the reload connect
    /// afresh.
    @Test func anExchangeThatOutlivesAReloadClosesItsUpstreamConnection() throws {
        let answer = whenRequestComplete("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        let arrived = DispatchSemaphore(value: 0)
        let release = DispatchSemaphore(value: 0)
        let upstream = try RecordingUpstream(closeAfterReply: false) { got in
            guard let reply = answer(got) else { return nil }
            arrived.signal()
            release.wait()
            return reply
        }
        let proxy = try TestProxy(upstreamPort: upstream.port)
        let client = try RawClient(port: proxy.port, timeout: 5)
        try client.send("GET /before HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(arrived.wait(timeout: .now() + 5) == .success)

        var next = proxy.configuration
        next.upstreams[0].maxConcurrency = 7
        try proxy.server.reload(next)
        release.signal()
        #expect(try client.readResponse().text == "ok")
        #expect(waitUntil(timeout: 3) { upstream.closedByPeer == 1 },
                "the old exchange's upstream connection was kept open")

        // The next request goes out on a new connection.
        try client.send("GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(arrived.wait(timeout: .now() + 5) == .success)
        release.signal()
        #expect(try client.readResponse().text == "ok")
        #expect(upstream.connections == 2)
        #expect(upstream.closedByPeer == 1, "the current upstream's connection stays in its pool")
    }
}
