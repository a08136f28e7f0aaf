import Config
import HTTP
import Loop

/// An upstream as the data path uses it: resolved address and its gate.
public final class UpstreamTarget: Sendable {
    public let name: String
    public let config: Upstream
    public let address: ResolvedAddress
    public let pathPrefix: [UInt8]
    public let gate: ConcurrencyGate

    init(config: Upstream, address: ResolvedAddress, gate: ConcurrencyGate) {
        self.name = config.name
        self.config = config
        self.address = address
        self.gate = gate
        self.pathPrefix = Array(config.url.pathPrefix.utf8)
    }
}

/// A route with its match data as bytes, so matching allocates nothing; a
/// class, so handing one to an exchange is a single retain.
public final class CompiledRoute: Sendable {
    public let pathPrefix: [UInt8]
    public let methods: [[UInt8]]
    public let host: [UInt8]?
    public let upstream: UpstreamTarget
    public let mode: RouteMode
    public let asyncAfter: Duration
    public let index: Int
    /// `name`, or `path_prefix` (SPEC §2).
    public let label: String

    init(pathPrefix: [UInt8], methods: [[UInt8]], host: [UInt8]?, upstream: UpstreamTarget, mode: RouteMode,
         asyncAfter: Duration, index: Int, label: String) {
        self.label = label
        self.pathPrefix = pathPrefix
        self.methods = methods
        self.host = host
        self.upstream = upstream
        self.mode = mode
        self.asyncAfter = asyncAfter
        self.index = index
    }
}

/// The immutable runtime form of a `Configuration`. A reload builds a new one
/// and each loop swaps its reference; exchanges in flight keep the old one.
public final class RuntimeConfig: Sendable {
    public let configuration: Configuration
    public let routes: [CompiledRoute]
    public let upstreams: [UpstreamTarget]
    public let jobsPath: [UInt8]
    /// `public_url` without trailing slashes: the base of job URLs.
    public let publicBase: [UInt8]?
    /// `jobs.bind_to` as a lower-case header name.
    public let bindHeader: [UInt8]?
    public let serverLimits: HTTPServerLimits

    /// Resolves upstream hosts (once, like nginx's `proxy_pass`). Gates of
    /// upstreams that keep their name are reused so in-flight counts carry over.
    public init(_ configuration: Configuration, previous: RuntimeConfig? = nil) throws(SocketError) {
        self.configuration = configuration
        var targets: [UpstreamTarget] = []
        for u in configuration.upstreams {
            let address = try SocketAddress.resolve(host: u.url.host, port: u.url.port)
            let gate: ConcurrencyGate
            if let old = previous?.upstreams.first(where: { $0.name == u.name }) {
                gate = old.gate  // new limits apply in `activate`, once all of this succeeded
            } else {
                gate = ConcurrencyGate(limit: u.maxConcurrency, maxQueued: u.maxQueued)
            }
            targets.append(UpstreamTarget(config: u, address: address, gate: gate))
        }
        self.upstreams = targets
        var routes: [CompiledRoute] = []
        for (i, r) in configuration.routes.enumerated() {
            guard let target = targets.first(where: { $0.name == r.upstream }) else {
                throw SocketError(message: "route \(i + 1) names unknown upstream '\(r.upstream)'")
            }
            routes.append(CompiledRoute(
                pathPrefix: Array(r.pathPrefix.utf8),
                methods: r.methods.map { Array($0.uppercased().utf8) },
                host: r.host.map { Array($0.lowercased().utf8) },
                upstream: target, mode: r.mode, asyncAfter: r.asyncAfter, index: i, label: r.label))
        }
        self.routes = routes
        self.jobsPath = Array(configuration.jobs.path.utf8)
        self.publicBase = configuration.publicURL.map { url in
            var bytes = Array(url.utf8)
            while bytes.last == UInt8(ascii: "/") { bytes.removeLast() }
            return bytes
        }
        self.bindHeader = configuration.jobs.bindTo.map { Array($0.dropFirst("header:".count).lowercased().utf8) }
        var limits = HTTPServerLimits()
        limits.maxHeaderBytes = configuration.limits.maxHeaderBytes
        limits.maxRequestBody = configuration.limits.maxRequestBody
        limits.headerTimeout = configuration.limits.headerTimeout
        limits.bodyTimeout = configuration.limits.bodyTimeout
        limits.idleTimeout = configuration.limits.idleTimeout
        self.serverLimits = limits
    }

    /// Applies the concurrency limits of this configuration to the gates it
    /// shares with the previous one; call only once the reload is accepted.
    public func activate() {
        for target in upstreams {
            target.gate.update(limit: target.config.maxConcurrency, maxQueued: target.config.maxQueued)
        }
    }

    public func upstream(named name: String) -> UpstreamTarget? {
        upstreams.first { $0.name == name }
    }

    /// The first route matching the request, or nil (SPEC §2: in order).
    public func route(for request: MessageReader) -> CompiledRoute? {
        let path = request.path
        let method = request.methodName
        let host = request.hostValue
        for route in routes {
            if !hasPrefix(path, route.pathPrefix) { continue }
            if !route.methods.isEmpty && !route.methods.contains(where: { bytesEqual(method, $0) }) { continue }
            if let want = route.host {
                guard let host, hostMatches(host, want) else { continue }
            }
            return route
        }
        return nil
    }

    /// True when the path is the job endpoint or below it.
    public func isJobPath(_ request: MessageReader) -> Bool {
        let path = request.path
        guard hasPrefix(path, jobsPath) else { return false }
        return path.count == jobsPath.count || path[jobsPath.count] == UInt8(ascii: "/") || path[jobsPath.count] == UInt8(ascii: "?")
    }
}

/// Host field against a lower-case route host, ignoring the port.
func hostMatches(_ host: UnsafeBufferPointer<UInt8>, _ want: [UInt8]) -> Bool {
    var n = host.count
    if host.first == UInt8(ascii: "[") {
        // IP-literal: the name ends at "]".
        n = (host.firstIndex(of: UInt8(ascii: "]")) ?? n - 1) + 1
    } else if let colon = host.firstIndex(of: UInt8(ascii: ":")) {
        n = colon
    }
    return headerName(UnsafeBufferPointer(rebasing: host[0..<n]), equals: want)
}
