import Yams
#if canImport(Glibc)
import Glibc
#endif

/// Walks a composed YAML tree into a `Configuration`. Every error carries the
/// mark of the offending key or value and its key path, e.g. `limits.body_timeout`.
struct Walker {
    let file: String
    let lookupEnv: @Sendable (String) -> String?

    /// One key of a mapping (or an item of a list), with its dotted path.
    struct Entry {
        let key: String
        let keyNode: Node
        let value: Node
        let path: String
    }

    // MARK: - The document

    func configuration(_ root: Node?, requireRoutes: Bool) throws(ConfigError) -> Configuration {
        guard let root, !isNull(root) else {
            throw error(nil, "the configuration is empty; it needs at least 'upstreams' and 'routes'")
        }
        guard case .mapping = root else {
            throw error(root, "expected a mapping of keys at the top level, got \(describe(root))")
        }
        var config = Configuration()
        var upstreamsEntry: Entry?
        var routesEntry: Entry?
        var routes: [(route: Route, upstreamNode: Node, path: String)] = []
        let keys = [
            "listen", "admin_listen", "threads", "store", "redis", "public_url", "access_log", "metrics",
            "log_level", "limits", "jobs", "upstreams", "routes",
        ]
        for e in try entries(root, "", keys) {
            switch e.key {
            case "listen": config.listen = try value(e, "HOST:PORT", parseAddress)
            case "admin_listen": config.adminListen = isNull(e.value) ? nil : try value(e, "HOST:PORT", parseAddress)
            case "threads": config.threads = try value(e, "a positive integer or \"auto\"", parseThreads)
            case "store": config.store = try value(e, "a store URL", parseStore)
            case "redis": config.redis = try redis(e)
            case "public_url": config.publicURL = isNull(e.value) ? nil : try value(e, "an http(s) URL", parsePublicURL)
            case "access_log": config.accessLog = try value(e, "stdout or off", parseAccessLog)
            case "metrics": config.metrics = try value(e, "on or off", parseOnOff)
            case "log_level": config.logLevel = try value(e, "a log level", parseLogLevel)
            case "limits": config.limits = try limits(e)
            case "jobs": config.jobs = try jobs(e)
            case "upstreams":
                upstreamsEntry = e
                config.upstreams = try upstreams(e)
            case "routes":
                routesEntry = e
                routes = try self.routes(e)
            default: break
            }
        }
        if requireRoutes {
            guard let upstreamsEntry else { throw error(nil, "no upstreams: at least one upstream is required under 'upstreams'") }
            guard let routesEntry else { throw error(nil, "no routes: at least one route is required under 'routes'") }
            if config.upstreams.isEmpty { throw error(upstreamsEntry.value, "upstreams: at least one upstream is required") }
            if routes.isEmpty { throw error(routesEntry.value, "routes: at least one route is required") }
        }
        // Checked after the walk so that `routes` may come before `upstreams` in the file.
        for r in routes where config.upstream(named: r.route.upstream) == nil {
            let defined = config.upstreams.map { "'\($0.name)'" }.joined(separator: ", ")
            throw error(
                r.upstreamNode,
                "\(r.path).upstream: unknown upstream '\(r.route.upstream)'"
                    + (defined.isEmpty ? "; no upstreams are defined" : "; defined: \(defined)"))
        }
        config.routes = routes.map(\.route)
        return config
    }

    // MARK: - Sections

    func limits(_ e: Entry) throws(ConfigError) -> Limits {
        var l = Limits()
        let keys = [
            "max_header_bytes", "max_request_body", "max_connections", "header_timeout", "body_timeout",
            "idle_timeout", "shutdown_grace",
        ]
        for f in try entries(e.value, e.path, keys) {
            switch f.key {
            case "max_header_bytes": l.maxHeaderBytes = try Int(clamping: size(f))
            case "max_request_body": l.maxRequestBody = try size(f)
            case "max_connections": l.maxConnections = try int(f, min: 1)
            case "header_timeout": l.headerTimeout = try duration(f, allowZero: false)
            case "body_timeout": l.bodyTimeout = try duration(f, allowZero: false)
            case "idle_timeout": l.idleTimeout = try duration(f, allowZero: false)
            case "shutdown_grace": l.shutdownGrace = try duration(f, allowZero: true)
            default: break
            }
        }
        return l
    }

    func redis(_ e: Entry) throws(ConfigError) -> RedisSettings {
        var r = RedisSettings()
        for f in try entries(e.value, e.path, ["lease", "prefix", "wait_replicas"]) {
            switch f.key {
            case "lease":
                r.lease = try duration(f, allowZero: false)
                // Renewed at a third of itself: below a second, renewals
                // would be most of what a replica sends.
                if r.lease < .seconds(1) { throw error(f.value, "\(f.path): must be at least 1s") }
            case "prefix": r.prefix = try value(f, "a key prefix", parseKeyPrefix)
            case "wait_replicas": r.waitReplicas = try int(f, min: 0)
            default: break
            }
        }
        return r
    }

    func jobs(_ e: Entry) throws(ConfigError) -> Jobs {
        var j = Jobs()
        let keys = ["path", "result_ttl", "max_result_body", "max_wait", "bind_to", "dir"]
        for f in try entries(e.value, e.path, keys) {
            switch f.key {
            case "path": j.path = try value(f, "a path like /jobs", parseJobsPath)
            case "result_ttl": j.resultTTL = try duration(f, allowZero: false)
            case "max_result_body": j.maxResultBody = try size(f)
            case "max_wait": j.maxWait = try duration(f, allowZero: true)
            case "bind_to": j.bindTo = isNull(f.value) ? nil : try value(f, "header:NAME", parseBindTo)
            case "dir": j.dir = try string(f)
            default: break
            }
        }
        return j
    }

    func upstreams(_ e: Entry) throws(ConfigError) -> [Upstream] {
        if isNull(e.value) { return [] }
        guard case .mapping(let m) = e.value else {
            throw error(e.value, "upstreams: expected a mapping of upstream names to settings, got \(describe(e.value))")
        }
        var result: [Upstream] = []
        for (keyNode, body) in m {
            guard case .scalar(let k) = keyNode, isToken(k.string) else {
                throw error(keyNode, "upstreams: an upstream name must be a plain word like 'reports'")
            }
            let path = "upstreams.\(k.string)"
            var url: UpstreamURL?
            var u = Upstream(name: k.string, url: UpstreamURL(scheme: "http", host: "", port: 80, pathPrefix: ""))
            var caFileEntry: Entry?
            let keys = [
                "url", "max_concurrency", "max_queued", "connect_timeout", "timeout", "sync_timeout", "ca_file", "retry",
            ]
            for f in try entries(body, path, keys) {
                switch f.key {
                case "url": url = try value(f, "an http(s) URL", parseUpstreamURL)
                case "max_concurrency": u.maxConcurrency = try int(f, min: 1)
                case "max_queued": u.maxQueued = try int(f, min: 0)
                case "connect_timeout": u.connectTimeout = try duration(f, allowZero: false)
                case "timeout": u.timeout = try duration(f, allowZero: false)
                case "sync_timeout": u.syncTimeout = try duration(f, allowZero: false)
                case "ca_file":
                    u.caFile = try optionalString(f)
                    caFileEntry = f
                case "retry": u.retry = try retry(f, defaults: u.retry)
                default: break
                }
            }
            guard let url else { throw error(keyNode, "\(path): missing key 'url'") }
            // Only https:// upstreams use it (SPEC §2's example gives one to an http:// upstream).
            if url.scheme == "https", let f = caFileEntry { try checkReadable(u.caFile, f) }
            u.url = url
            result.append(u)
        }
        return result
    }

    func retry(_ e: Entry, defaults: RetryPolicy) throws(ConfigError) -> RetryPolicy {
        var r = defaults
        var backoffGiven = false
        var maxBackoffEntry: Entry?
        for f in try entries(e.value, e.path, ["attempts", "backoff", "max_backoff"]) {
            switch f.key {
            case "attempts": r.attempts = try int(f, min: 1)
            case "backoff":
                r.backoff = try duration(f, allowZero: true)
                backoffGiven = true
            case "max_backoff":
                r.maxBackoff = try duration(f, allowZero: true)
                maxBackoffEntry = f
            default: break
            }
        }
        if r.maxBackoff < r.backoff {
            if let m = maxBackoffEntry {
                throw error(m.value, "\(m.path): must be at least backoff (\(formatDuration(r.backoff)))")
            }
            // Only `backoff` was raised past the default cap: raise the cap with it.
            if backoffGiven { r.maxBackoff = r.backoff }
        }
        return r
    }

    func routes(_ e: Entry) throws(ConfigError) -> [(route: Route, upstreamNode: Node, path: String)] {
        if isNull(e.value) { return [] }
        guard case .sequence(let seq) = e.value else {
            throw error(e.value, "routes: expected a list of routes, got \(describe(e.value))")
        }
        var result: [(route: Route, upstreamNode: Node, path: String)] = []
        for (i, item) in seq.enumerated() {
            let path = "routes[\(i)]"
            guard case .mapping = item else {
                throw error(item, "\(path): expected a mapping with 'match', 'upstream' and 'mode', got \(describe(item))")
            }
            var route = Route(upstream: "")
            var upstreamNode: Node?
            var callbackKey: Node?
            for f in try entries(item, path, ["name", "match", "upstream", "mode", "async_after", "callback"]) {
                switch f.key {
                case "name":
                    let name = try string(f)
                    if name.isEmpty { throw error(f.value, "\(path).name: expected a non-empty name") }
                    if let other = result.first(where: { $0.route.name == name }) {
                        throw error(f.value, "\(path).name: '\(name)' is already the name of \(other.path)")
                    }
                    route.name = name
                case "match": try match(f, into: &route)
                case "upstream":
                    route.upstream = try string(f)
                    upstreamNode = f.value
                case "mode": route.mode = try value(f, "sync, async or auto", parseMode)
                case "async_after": route.asyncAfter = try duration(f, allowZero: true)
                case "callback":
                    route.callback = try callback(f)
                    callbackKey = f.keyNode
                default: break
                }
            }
            guard let upstreamNode else { throw error(item, "\(path): missing key 'upstream'") }
            // Metrics and logs tell routes apart by label (SPEC §2: the name,
            // else path_prefix): two with one label would count as one.
            if let other = result.first(where: { $0.route.label == route.label }) {
                throw error(item, "\(path): labelled '\(route.label)' like \(other.path) (a route without a name is "
                    + "labelled by its path_prefix): give one of them a name")
            }
            if let callbackKey, route.mode == .sync {
                throw error(callbackKey, "\(path).callback: callbacks need a job: the route's mode must be async or auto")
            }
            result.append((route, upstreamNode, path))
        }
        return result
    }

    func match(_ e: Entry, into route: inout Route) throws(ConfigError) {
        for f in try entries(e.value, e.path, ["path_prefix", "methods", "host"]) {
            switch f.key {
            case "path_prefix": route.pathPrefix = try value(f, "a path starting with /", parsePathPrefix)
            case "methods":
                var methods: [String] = []
                for item in try list(f) {
                    let m = try value(item, "a method name like POST", parseMethod)
                    if !methods.contains(m) { methods.append(m) }
                }
                route.methods = methods
            case "host": route.host = isNull(f.value) ? nil : try value(f, "a host name", parseMatchHost)
            default: break
            }
        }
    }

    func callback(_ e: Entry) throws(ConfigError) -> Callback {
        var c = Callback()
        var allowGiven = false
        var secretEntries: [Entry] = []
        for f in try entries(e.value, e.path,
                             ["allow", "secret", "secret_env", "secrets", "retry", "timeout", "max_concurrency", "ca_file"]) {
            switch f.key {
            case "allow":
                allowGiven = true
                for item in try list(f) {
                    c.allow.append(try value(item, "an http(s) URL prefix without userinfo or fragment", parseCallbackPrefix))
                }
                if c.allow.isEmpty { throw error(f.value, "\(f.path): expected at least one URL prefix") }
            case "secret":
                c.secrets = [try secret(f)]
                secretEntries.append(f)
            case "secret_env":
                let name = try string(f)
                guard let v = lookupEnv(name), !v.isEmpty else {
                    throw error(f.value, "\(f.path): environment variable \(name) is not set")
                }
                try checkSecret(v, f)
                c.secretEnv = name
                c.secrets = [v]
                secretEntries.append(f)
            case "secrets":
                c.secrets = []
                for item in try list(f) { c.secrets.append(try secret(item)) }
                if c.secrets.isEmpty { throw error(f.value, "\(f.path): expected at least one secret") }
                secretEntries.append(f)
            case "retry": c.retry = try retry(f, defaults: c.retry)
            case "timeout": c.timeout = try duration(f, allowZero: false)
            case "max_concurrency": c.maxConcurrency = try int(f, min: 1)
            case "ca_file":
                c.caFile = try optionalString(f)
                try checkReadable(c.caFile, f)
            default: break
            }
        }
        if secretEntries.count > 1 {
            let later = secretEntries.max { ($0.keyNode.mark?.line ?? 0) < ($1.keyNode.mark?.line ?? 0) }!
            throw error(later.keyNode, "\(e.path): secret, secret_env and secrets are mutually exclusive")
        }
        if !allowGiven { throw error(e.keyNode, "\(e.path): missing key 'allow' (the permitted callback URL prefixes)") }
        if secretEntries.isEmpty {
            throw error(e.keyNode, "\(e.path): missing key 'secret' (or secret_env, or secrets): deliveries are signed")
        }
        return c
    }

    /// A `ca_file`: nil, or a file this process can read.
    func checkReadable(_ path: String?, _ e: Entry) throws(ConfigError) {
        guard let path else { return }
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG, access(path, R_OK) == 0 else {
            throw error(e.value, "\(e.path): cannot read \(path)")
        }
    }

    /// A signing secret: not empty; after a `whsec_` prefix, base64.
    func secret(_ e: Entry) throws(ConfigError) -> String {
        let s = try string(e)
        try checkSecret(s, e)
        return s
    }

    func checkSecret(_ s: String, _ e: Entry) throws(ConfigError) {
        if s.isEmpty { throw error(e.value, "\(e.path): must not be empty") }
        if s.hasPrefix("whsec_"), !isBase64(s.dropFirst(6)) {
            throw error(e.value, "\(e.path): a whsec_ secret must be base64 after the prefix")
        }
    }

    // MARK: - Values

    func error(_ node: Node?, _ message: String) -> ConfigError {
        ConfigError(file: file, line: node?.mark?.line ?? 1, column: node?.mark?.column ?? 1, message: message)
    }

    /// `key:` with nothing, `~` or `null` (unquoted).
    func isNull(_ node: Node) -> Bool {
        guard case .scalar(let s) = node, s.style == .plain || s.style == .any else { return false }
        return ["", "~", "null", "Null", "NULL"].contains(s.string)
    }

    func describe(_ node: Node) -> String {
        switch node {
        case .mapping: "a mapping"
        case .sequence: "a list"
        case .alias: "an alias"
        case .scalar(let s): isNull(node) ? "nothing" : quoted(s.string)
        }
    }

    /// The keys of a mapping, each checked against `keys`. Null counts as an empty mapping.
    func entries(_ node: Node, _ path: String, _ keys: [String]) throws(ConfigError) -> [Entry] {
        if isNull(node) { return [] }
        guard case .mapping(let m) = node else {
            throw error(node, "\(path): expected a mapping of keys, got \(describe(node))")
        }
        var result: [Entry] = []
        for (keyNode, value) in m {
            guard case .scalar(let k) = keyNode else {
                throw error(keyNode, "\(path.isEmpty ? "top level" : path): keys must be plain strings")
            }
            let key = k.string
            guard keys.contains(key) else {
                var message = "unknown key '\(key)'" + (path.isEmpty ? "" : " in \(path)")
                if let best = keys.min(by: { editDistance(key, $0) < editDistance(key, $1) }),
                   editDistance(key, best) <= min(2, max(1, key.count / 3)) {
                    message += " (did you mean '\(best)'?)"
                }
                throw error(keyNode, message)
            }
            result.append(Entry(key: key, keyNode: keyNode, value: value, path: path.isEmpty ? key : "\(path).\(key)"))
        }
        return result
    }

    /// A list's items as entries `path[i]`; a lone scalar is a list of one.
    func list(_ e: Entry) throws(ConfigError) -> [Entry] {
        switch e.value {
        case .sequence(let seq):
            return seq.enumerated().map { Entry(key: e.key, keyNode: e.keyNode, value: $1, path: "\(e.path)[\($0)]") }
        case .scalar where !isNull(e.value):
            return [e]
        default:
            throw error(e.value, "\(e.path): expected a list, got \(describe(e.value))")
        }
    }

    /// A scalar through `parse`; `expected` describes it when the node is not a scalar at all.
    func value<T>(_ e: Entry, _ expected: String, _ parse: (String) -> Result<T, Problem>) throws(ConfigError) -> T {
        guard case .scalar(let s) = e.value, !isNull(e.value) else {
            throw error(e.value, "\(e.path): expected \(expected), got \(describe(e.value))")
        }
        switch parse(s.string) {
        case .success(let v): return v
        case .failure(let p): throw error(e.value, "\(e.path): \(p.message)")
        }
    }

    func string(_ e: Entry) throws(ConfigError) -> String {
        try value(e, "a string") { s in s.isEmpty ? .failure(Problem("must not be empty")) : .success(s) }
    }

    func optionalString(_ e: Entry) throws(ConfigError) -> String? {
        isNull(e.value) ? nil : try string(e)
    }

    func int(_ e: Entry, min: Int) throws(ConfigError) -> Int {
        let expected = min == 1 ? "a positive integer" : min == 0 ? "a non-negative integer" : "an integer >= \(min)"
        return try value(e, expected) { s in
            if let n = parseInteger(s), n >= min { return .success(n) }
            return .failure(Problem("expected \(expected), got \(quoted(s))"))
        }
    }

    func duration(_ e: Entry, allowZero: Bool) throws(ConfigError) -> Duration {
        let expected = "a duration like 250ms, 2s, 15m, 24h"
        return try value(e, expected) { s in
            guard let d = parseDuration(s) else { return .failure(Problem("expected \(expected), got \(quoted(s))")) }
            if !allowZero && d == .zero { return .failure(Problem("must be greater than 0s")) }
            return .success(d)
        }
    }

    func size(_ e: Entry) throws(ConfigError) -> Int64 {
        let expected = "a size like 512, 16KiB, 8MiB"
        return try value(e, expected) { s in
            guard let n = parseSize(s) else { return .failure(Problem("expected \(expected), got \(quoted(s))")) }
            if n == 0 { return .failure(Problem("must be at least 1 byte")) }
            return .success(n)
        }
    }
}

// MARK: - Small value parsers used only by the walker

private func parseAccessLog(_ s: String) -> Result<Bool, Problem> {
    switch s {
    case "stdout": .success(true)
    case "off": .success(false)
    default: .failure(Problem("expected stdout or off, got \(quoted(s))"))
    }
}

private func parseOnOff(_ s: String) -> Result<Bool, Problem> {
    switch s {
    case "on", "true": .success(true)
    case "off", "false": .success(false)
    default: .failure(Problem("expected on or off, got \(quoted(s))"))
    }
}

private func parseMode(_ s: String) -> Result<RouteMode, Problem> {
    RouteMode(rawValue: s).map { .success($0) } ?? .failure(Problem("expected sync, async or auto, got \(quoted(s))"))
}

private func hasNoSpaceQueryOrFragment(_ s: String) -> Bool {
    !s.contains { $0.isWhitespace || $0 == "?" || $0 == "#" }
}

private func parsePathPrefix(_ s: String) -> Result<String, Problem> {
    guard s.hasPrefix("/"), hasNoSpaceQueryOrFragment(s) else {
        return .failure(Problem("expected a path starting with /, got \(quoted(s))"))
    }
    return .success(s)
}

private func parseJobsPath(_ s: String) -> Result<String, Problem> {
    guard s.hasPrefix("/"), !s.hasSuffix("/"), hasNoSpaceQueryOrFragment(s) else {
        return .failure(Problem("expected a path that starts with / and does not end with /, e.g. /jobs, got \(quoted(s))"))
    }
    return .success(s)
}

private func parseMethod(_ s: String) -> Result<String, Problem> {
    isToken(s) ? .success(s.uppercased()) : .failure(Problem("expected a method name like POST, got \(quoted(s))"))
}

private func parseMatchHost(_ s: String) -> Result<String, Problem> {
    guard !s.isEmpty, !s.contains(where: { $0.isWhitespace || $0 == "/" || $0 == "@" }) else {
        return .failure(Problem("expected a host name like api.example.com, got \(quoted(s))"))
    }
    return .success(s.lowercased())
}

private func parseBindTo(_ s: String) -> Result<String, Problem> {
    let prefix = "header:"
    guard s.hasPrefix(prefix), isToken(String(s.dropFirst(prefix.count))) else {
        return .failure(Problem("expected header:NAME, e.g. header:Authorization, got \(quoted(s))"))
    }
    return .success(s)
}

/// Validated as a URL, but kept as written minus a trailing slash: it is only a base for links.
private func parsePublicURL(_ s: String) -> Result<String, Problem> {
    parseUpstreamURL(s).map { _ in
        var t = Substring(s)
        while t.hasSuffix("/") { t = t.dropLast() }
        return String(t)
    }
}

/// Parsed as `X-Callback-Url` values are, so both meet on the same terms;
/// without a query, which prefix matching would ignore.
private func parseCallbackPrefix(_ s: String) -> Result<CallbackURL, Problem> {
    switch CallbackURL.parsing(s) {
    case .success(let u) where u.query != nil:
        return .failure(Problem("expected http(s)://HOST[:PORT][/PATH] without a query, got \(quoted(s))"))
    case .success(let u):
        return .success(u)
    case .failure(let refusal):
        return .failure(Problem("expected http(s)://HOST[:PORT][/PATH]: \(refusal), got \(quoted(s))"))
    }
}

/// Standard base64 with padding, not empty.
private func isBase64(_ s: Substring) -> Bool {
    let bytes = Array(s.utf8)
    guard !bytes.isEmpty, bytes.count % 4 == 0 else { return false }
    let body = bytes.prefix { $0 != UInt8(ascii: "=") }
    guard bytes.count - body.count <= 2, bytes[body.count...].allSatisfy({ $0 == UInt8(ascii: "=") }) else { return false }
    return body.allSatisfy { b in
        (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39)
            || b == UInt8(ascii: "+") || b == UInt8(ascii: "/")
    }
}
