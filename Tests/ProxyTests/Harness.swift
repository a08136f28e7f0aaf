import Config
import DemoBackend
import Foundation
import HTTP
import Logging
import Loop
import Server
import TestSupport

// The proxy-specific harness: coatcheck itself and the demo backend in this
// process. The generic pieces (sockets, clients, the response parser, the
// fake upstream, child processes) are in TestSupport.

/// An in-process demo backend on its own loop thread.
final class InProcessBackend: @unchecked Sendable {
    let group = EventLoopGroup(count: 1)
    var port = 0
    var backend: LoopBound<DemoBackend>!
    let stats = DemoStats()

    init() throws {
        group.start()
        let loop = group.loops[0]
        let stats = self.stats
        let (b, p) = try loop.submitAndWait { () throws -> (LoopBound<DemoBackend>, Int) in
            let b = DemoBackend(loop: loop, stats: stats)
            let p = try b.server.listen(host: "127.0.0.1", port: 0, reusePort: false)
            return (LoopBound(b, loop: loop), p)
        }
        backend = b
        port = p
    }

    deinit { group.shutdown() }
}

/// A coatcheck server in this process, in front of `upstreamPort`.
final class TestProxy {
    let server: CoatcheckServer
    /// What it started with (a reload starts from this).
    let configuration: Configuration
    var port: Int { server.port }

    init(upstreamPort: Int, threads: Int = 1, yaml extra: (inout Configuration) -> Void = { _ in }) throws {
        var c = Configuration()
        c.listen = SocketAddressSpec(host: "127.0.0.1", port: 0)
        c.threads = threads
        c.accessLog = false
        c.store = .memory
        c.jobs.dir = makeTempDirectory()
        c.upstreams = [Upstream(name: "app", url: UpstreamURL(scheme: "http", host: "127.0.0.1", port: upstreamPort, pathPrefix: ""))]
        var route = Route(upstream: "app")
        route.mode = .sync
        c.routes = [route]
        extra(&c)
        configuration = c
        server = try CoatcheckServer(configuration: c, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        try server.start()
    }

    deinit { server.shutdown() }
}
