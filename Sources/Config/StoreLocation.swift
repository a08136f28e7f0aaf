/// `store:` (SPEC §2): where jobs are kept.
public enum StoreLocation: Sendable, Equatable, CustomStringConvertible {
    /// `memory:`: not durable.
    case memory
    /// `sqlite:PATH`.
    case sqlite(path: String)
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (SPEC §5b).
    case redis(RedisURL)

    /// As configured, with a Redis password written as `***`: safe to log.
    public var description: String {
        switch self {
        case .memory: return "memory:"
        case .sqlite(let path): return "sqlite:" + path
        case .redis(let url): return url.description
        }
    }
}

/// A Redis server to keep jobs in. The password is never part of
/// `description`, so the URL can go into logs and errors as it is.
public struct RedisURL: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// `SELECT`ed after connecting; 0 when the URL has no path.
    public var database: Int
    /// An ACL user (Redis 6+); nil: the default user.
    public var username: String?
    public var password: String?

    public init(host: String, port: Int = 6379, database: Int = 0, username: String? = nil, password: String? = nil) {
        self.host = host
        self.port = port
        self.database = database
        self.username = username
        self.password = password
    }

    public var description: String {
        var s = "redis://"
        if username != nil || password != nil { s += (username ?? "") + (password == nil ? "" : ":***") + "@" }
        s += host.contains(":") ? "[\(host)]" : host
        return s + ":\(port)/\(database)"
    }
}

/// `redis:` (SPEC §2, §5b): read with any store, used with a `redis://` one
/// (so an environment or flag may switch the store without editing the file).
public struct RedisSettings: Sendable, Equatable {
    /// A running job's claim; renewed while its exchange is alive. Default 30s.
    public var lease: Duration = .seconds(30)
    /// Prefix of every key, so deployments can share one Redis.
    public var prefix: String = "coatcheck"
    /// > 0: `WAIT` for that many Redis replicas before each 202.
    public var waitReplicas: Int = 0

    public init() {}
}

private let storeExpected = "expected \"memory:\", \"sqlite:PATH\" or \"redis://[:PASSWORD@]HOST:PORT/DB\""

func parseStore(_ s: String) -> Result<StoreLocation, Problem> {
    if s == "memory:" { return .success(.memory) }
    if s.hasPrefix("sqlite:") && s.count > 7 { return .success(.sqlite(path: String(s.dropFirst(7)))) }
    if s.hasPrefix("redis://") { return parseRedisURL(s).map(StoreLocation.redis) }
    if s.hasPrefix("rediss://") {
        return .failure(Problem("TLS to Redis (rediss://) is not supported; reach Redis over a private network or a local TLS tunnel"))
    }
    return .failure(Problem("\(storeExpected), got \(quoted(s))"))
}

/// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`, the form redis-cli and most
/// clients take. The userinfo is percent-decoded. Errors never quote the
/// password: they show the URL with it written as `***`.
func parseRedisURL(_ s: String) -> Result<RedisURL, Problem> {
    var rest = Substring(s.dropFirst("redis://".count))
    var username: String?
    var password: String?
    var shown = "redis://"
    if let at = rest.lastIndex(of: "@") {
        let userinfo = rest[..<at]
        rest = rest[rest.index(after: at)...]
        if let colon = userinfo.firstIndex(of: ":") {
            let user = userinfo[..<colon]
            guard let u = percentDecoded(user), let p = percentDecoded(userinfo[userinfo.index(after: colon)...]) else {
                return .failure(Problem("bad percent-encoding in the URL's user or password"))
            }
            username = user.isEmpty ? nil : u
            password = p
            shown += user + ":***@"
        } else {
            // `redis://PASSWORD@HOST`: redis-cli reads a lone userinfo as the password.
            guard let p = percentDecoded(userinfo) else {
                return .failure(Problem("bad percent-encoding in the URL's password"))
            }
            password = p
            shown += "***@"
        }
    }
    shown += rest
    let slash = rest.firstIndex(of: "/") ?? rest.endIndex
    let authority = rest[..<slash]
    let path = rest[slash...].dropFirst()
    let form = "expected redis://[:PASSWORD@]HOST[:PORT][/DB]"
    if rest.contains("?") || rest.contains("#") {
        return .failure(Problem("a redis URL takes no query or fragment; the redis: block holds the settings, got \(quoted(shown))"))
    }
    let hostPort: (host: String, port: Int)
    switch parseAuthority(authority, defaultPort: 6379, form: form, example: "redis://[::1]:6379/0", shown: shown) {
    case .success(let hp): hostPort = hp
    case .failure(let p): return .failure(p)
    }
    var database = 0
    if !path.isEmpty {
        guard !path.contains("_"), let n = parseInteger(String(path)), n <= 1_000_000 else {
            return .failure(Problem("the database must be a number like /0, got \(quoted(shown))"))
        }
        database = n
    }
    return .success(RedisURL(host: hostPort.host, port: hostPort.port, database: database, username: username, password: password))
}

/// `%XX` escapes decoded (RFC 3986 §2.1); nil for a malformed escape or bytes that are not UTF-8.
private func percentDecoded(_ s: Substring) -> String? {
    var bytes: [UInt8] = []
    var i = s.utf8.startIndex
    let u = s.utf8
    while i < u.endIndex {
        let c = u[i]
        if c == UInt8(ascii: "%") {
            let h = u.index(after: i)
            guard h < u.endIndex, u.index(after: h) < u.endIndex,
                  let hi = hexValue(u[h]), let lo = hexValue(u[u.index(after: h)]) else { return nil }
            bytes.append(hi << 4 | lo)
            i = u.index(h, offsetBy: 2)
        } else {
            bytes.append(c)
            i = u.index(after: i)
        }
    }
    return String(validating: bytes, as: UTF8.self)
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}

/// `redis.prefix`: letters, digits and `_ - . :`, at most 64, so keys stay
/// readable in `redis-cli` and never need quoting.
func parseKeyPrefix(_ s: String) -> Result<String, Problem> {
    let allowed = s.utf8.allSatisfy { c in
        (c >= 0x30 && c <= 0x39) || (c | 0x20 >= 0x61 && c | 0x20 <= 0x7A) || c == 0x5F || c == 0x2D || c == 0x2E || c == 0x3A
    }
    guard !s.isEmpty, s.utf8.count <= 64, allowed else {
        return .failure(Problem("expected 1-64 letters, digits or _ - . :, got \(quoted(s))"))
    }
    return .success(s)
}
