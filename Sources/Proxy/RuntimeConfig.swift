public import Config
public import HTTP
import Loop
import Meters

/// The immutable runtime form of a `Configuration`. A reload builds a new one
/// and each loop swaps its reference; exchanges in flight keep the old one.
public final class RuntimeConfig: Sendable {
    public let configuration: Configuration
    public let routes: [CompiledRoute]
    public let upstreams: [UpstreamTarget]
    public let jobsPath: [UInt8]
    /// The job API's route label in metrics: `jobs.path`.
    public let jobsMeterSlot: Int
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
            let gate: any ConcurrencyGate
            if let old = previous?.upstreams.first(where: { $0.name == u.name }) {
                gate = old.gate  // new limits apply in `activate`, once all of this succeeded
            } else {
                gate = LocalConcurrencyGate(limit: u.maxConcurrency, maxQueued: u.maxQueued)
            }
            var tls: TLSClientContext?
            if u.url.scheme == "https" {
                do {
                    tls = try TLSClientContext(caFile: u.caFile)
                } catch {
                    throw SocketError(message: "upstream '\(u.name)': \(error)")
                }
            }
            targets.append(UpstreamTarget(config: u, address: address, gate: gate, tls: tls))
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
        self.jobsMeterSlot = MeterLabels.slot(route: configuration.jobs.path)
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
}
