/// The whole configuration of one coatcheck process: SPEC §2.
///
/// A value type: a reload builds a new one and the loops swap to it; nothing
/// in here is ever mutated in place. Defaults are documented on each field
/// and match SPEC §2.
public struct Configuration: Sendable, Equatable {
    /// `listen`: where the proxy accepts clients. Default `0.0.0.0:8080`.
    public var listen: SocketAddressSpec = .init(host: "0.0.0.0", port: 8080)
    /// `admin_listen`: /healthz /readyz /metrics; nil means off.
    public var adminListen: SocketAddressSpec?
    /// `threads`: event-loop threads; nil means `auto` (one per core).
    public var threads: Int?
    /// `store`: `memory:`, `sqlite:PATH` or `redis://HOST:PORT/DB`.
    public var store: StoreLocation = .sqlite(path: "./data/coatcheck.db")
    /// `redis:`: used with a `redis://` store.
    public var redis: RedisSettings = .init()
    /// `public_url`: base of status_url/result_url; nil means from Host.
    public var publicURL: String?
    /// `access_log`: `stdout` (default) or `off`. Not in SPEC; nginx users expect the switch.
    public var accessLog: Bool = true
    /// `metrics`: `on` (default) or `off`: whether requests, upstream
    /// exchanges and jobs are counted for the admin listener's `/metrics`.
    /// Not in SPEC; there to measure what counting costs.
    public var metrics: Bool = true
    /// `log_level`: trace, debug, info, notice, warning, error, critical. Default info.
    public var logLevel: LogLevel = .info
    public var limits: Limits = .init()
    public var jobs: Jobs = .init()
    /// `upstreams`: by name, in file order.
    public var upstreams: [Upstream] = []
    /// `routes`: tried in order, first match wins.
    public var routes: [Route] = []

    public init() {}

    public func upstream(named name: String) -> Upstream? {
        upstreams.first { $0.name == name }
    }
}

public enum LogLevel: String, Sendable, Equatable, CaseIterable {
    case trace, debug, info, notice, warning, error, critical
}

/// `HOST:PORT`; HOST may be a name, an IPv4 address or a bracketed IPv6 address.
public struct SocketAddressSpec: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}

/// `limits:` (SPEC §2).
public struct Limits: Sendable, Equatable {
    /// Over: 431. Default 16 KiB.
    public var maxHeaderBytes: Int = 16 * 1024
    /// Over: 413. Default 8 MiB.
    public var maxRequestBody: Int64 = 8 * 1024 * 1024
    /// Over: new connections refused. Default 10000.
    public var maxConnections: Int = 10_000
    /// Total time to receive the head; over: 408 + close. Default 10s.
    public var headerTimeout: Duration = .seconds(10)
    /// Total time to receive the body; over: 408 + close. Default 60s.
    public var bodyTimeout: Duration = .seconds(60)
    /// Keep-alive idle. Default 60s.
    public var idleTimeout: Duration = .seconds(60)
    /// How long in-flight exchanges may finish after SIGTERM. Default 30s.
    public var shutdownGrace: Duration = .seconds(30)

    public init() {}
}

/// `jobs:` (SPEC §2). Parsed and validated now; used by the jobs layer.
public struct Jobs: Sendable, Equatable {
    public var path: String = "/jobs"
    public var resultTTL: Duration = .seconds(24 * 3600)
    public var maxResultBody: Int64 = 64 * 1024 * 1024
    public var maxWait: Duration = .seconds(60)
    /// e.g. `header:Authorization`; nil means jobs are not bound to a credential.
    public var bindTo: String?
    public var dir: String = "./data"

    public init() {}
}

/// `retry: { attempts, backoff, max_backoff }`.
public struct RetryPolicy: Sendable, Equatable {
    /// Tries in all; 1 means no retry.
    public var attempts: Int = 1
    public var backoff: Duration = .seconds(1)
    public var maxBackoff: Duration = .seconds(60)

    public init(attempts: Int = 1, backoff: Duration = .seconds(1), maxBackoff: Duration = .seconds(60)) {
        self.attempts = attempts
        self.backoff = backoff
        self.maxBackoff = maxBackoff
    }
}

/// `upstreams.NAME` (SPEC §2).
public struct Upstream: Sendable, Equatable {
    public var name: String
    /// The parsed `url`.
    public var url: UpstreamURL
    /// Requests in flight to this upstream, sync and jobs together. Default 256.
    public var maxConcurrency: Int = 256
    /// Waiting beyond max_concurrency; over: 503 + Retry-After. Default 10000.
    public var maxQueued: Int = 10_000
    public var connectTimeout: Duration = .seconds(2)
    /// Whole exchange, background jobs. Default 15m.
    public var timeout: Duration = .seconds(15 * 60)
    /// Whole exchange, sync requests; over: 504. Default 60s.
    public var syncTimeout: Duration = .seconds(60)
    public var caFile: String?
    public var retry: RetryPolicy = .init()

    public init(name: String, url: UpstreamURL) {
        self.name = name
        self.url = url
    }
}

/// An upstream base URL: `http://HOST[:PORT][/PREFIX]` or `https://...`.
public struct UpstreamURL: Sendable, Equatable, CustomStringConvertible {
    public var scheme: String
    public var host: String
    public var port: Int
    /// Path prefix without a trailing slash ("" for none); prepended to forwarded targets.
    public var pathPrefix: String

    public init(scheme: String, host: String, port: Int, pathPrefix: String) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.pathPrefix = pathPrefix
    }

    public var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(scheme)://\(h):\(port)\(pathPrefix)"
    }
}

public enum RouteMode: String, Sendable, Equatable {
    case sync, async, auto
}

/// `routes[]` (SPEC §2).
public struct Route: Sendable, Equatable {
    /// `name`: the route's label in metrics, logs and job estimates.
    public var name: String?
    public var pathPrefix: String = "/"
    /// Upper-case method names; empty means any.
    public var methods: [String] = []
    /// Host to match (case-insensitive, port ignored); nil means any.
    public var host: String?
    public var upstream: String
    public var mode: RouteMode = .sync
    public var asyncAfter: Duration = .seconds(2)
    public var callback: Callback?

    public init(upstream: String) {
        self.upstream = upstream
    }

    /// The route's label: its `name`, or else its `path_prefix` (SPEC §2).
    public var label: String { name ?? pathPrefix }
}

/// `routes[].callback` (SPEC §4, webhooks).
public struct Callback: Sendable, Equatable {
    /// The permitted URL prefixes, parsed as callback URLs are.
    public var allow: [CallbackURL] = []
    /// Signing secrets, newest first: `secret`, the value of `secret_env`
    /// (read at load time), or `secrets` (rotation). Every delivery is
    /// signed with each.
    public var secrets: [String] = []
    public var secretEnv: String?
    public var retry: RetryPolicy = .init(attempts: 8, backoff: .seconds(5), maxBackoff: .seconds(3600))
    /// One attempt, connect to last byte.
    public var timeout: Duration = .seconds(30)
    /// Deliveries in flight for the route.
    public var maxConcurrency = 64
    public var caFile: String?

    public init() {}
}

/// A configuration error that points at the offending place: SPEC §1 wants
/// exactly one line `FILE:LINE:COL: message` (1-based).
public struct ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int
    public var column: Int
    public var message: String

    /// A line break in `file` or `message` (the YAML's own keys, values and
    /// names are quoted in messages) is written as an escape, `\n`.
    public init(file: String, line: Int, column: Int, message: String) {
        self.file = escapingLineBreaks(file)
        self.line = line
        self.column = column
        self.message = escapingLineBreaks(message)
    }

    public var description: String { "\(file):\(line):\(column): \(message)" }
}

private func escapingLineBreaks(_ s: String) -> String {
    guard s.contains(where: \.isNewline) else { return s }
    var out = ""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case _ where Character(scalar).isNewline: out += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
        default: out.unicodeScalars.append(scalar)
        }
    }
    return out
}
