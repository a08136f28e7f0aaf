/// Parsers of single configuration values, shared by the YAML walker and by
/// flags/environment. They say what was expected; the caller adds where.

/// What was wrong with a value, without its location.
struct Problem: Error {
    var message: String
    init(_ message: String) { self.message = message }
}

extension SocketAddressSpec {
    /// `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all IPv4 interfaces); nil if malformed.
    public init?(parsing s: String) {
        guard case .success(let a) = parseAddress(s) else { return nil }
        self = a
    }
}

extension UpstreamURL {
    /// `http://HOST[:PORT][/PREFIX]` or `https://...`; nil if malformed.
    public init?(parsing s: String) {
        guard case .success(let u) = parseUpstreamURL(s) else { return nil }
        self = u
    }
}

func quoted(_ s: String) -> String {
    "\"" + s.replacingOccurrences("\\", "\\\\").replacingOccurrences("\"", "\\\"") + "\""
}

extension String {
    fileprivate func replacingOccurrences(_ a: Character, _ b: String) -> String {
        var out = ""
        for c in self { if c == a { out += b } else { out.append(c) } }
        return out
    }
}

private let addressExpected = "expected HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080"

func parseAddress(_ s: String) -> Result<SocketAddressSpec, Problem> {
    let fail = Problem("\(addressExpected), got \(quoted(s))")
    var host: Substring
    var portText: Substring
    if s.hasPrefix("[") {
        guard let close = s.firstIndex(of: "]") else { return .failure(fail) }
        host = s[s.index(after: s.startIndex)..<close]
        let rest = s[s.index(after: close)...]
        guard rest.hasPrefix(":"), isIPv6(host) else { return .failure(fail) }
        portText = rest.dropFirst()
    } else {
        guard let colon = s.lastIndex(of: ":") else { return .failure(fail) }
        host = s[..<colon]
        portText = s[s.index(after: colon)...]
        if host.contains(":") {
            return .failure(Problem("IPv6 addresses need brackets, e.g. [::1]:8080, got \(quoted(s))"))
        }
        // `:8080` means every IPv4 interface, as in Go and Docker.
        if host.isEmpty { host = "0.0.0.0" }
        guard isHostName(host) else { return .failure(fail) }
    }
    guard let port = parsePort(portText), port <= 65535 else {
        return .failure(Problem("port must be 0-65535, got \(quoted(s))"))
    }
    return .success(SocketAddressSpec(host: String(host), port: port))
}

private let urlExpected = "expected http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]"

/// The base URL of an upstream; also validates other http(s) URLs (public_url, callback prefixes).
func parseUpstreamURL(_ s: String) -> Result<UpstreamURL, Problem> {
    let lower = s.lowercased()
    let scheme: String
    if lower.hasPrefix("http://") { scheme = "http" } else if lower.hasPrefix("https://") { scheme = "https" } else {
        return .failure(Problem("\(urlExpected), got \(quoted(s))"))
    }
    let rest = s.dropFirst(scheme.count + 3)
    if rest.contains("#") { return .failure(Problem("a fragment (#...) is not allowed, got \(quoted(s))")) }
    if rest.contains("?") { return .failure(Problem("a query (?...) is not allowed, got \(quoted(s))")) }
    if rest.contains(where: { $0.isWhitespace }) { return .failure(Problem("spaces are not allowed, got \(quoted(s))")) }
    let slash = rest.firstIndex(of: "/") ?? rest.endIndex
    let authority = rest[..<slash]
    var path = rest[slash...]
    if authority.contains("@") {
        return .failure(Problem("credentials (user@) are not allowed in the URL, got \(quoted(s))"))
    }
    let hostPort: (host: String, port: Int)
    switch parseAuthority(authority, defaultPort: scheme == "https" ? 443 : 80, form: urlExpected,
                          example: "http://[::1]:8080", shown: s) {
    case .success(let hp): hostPort = hp
    case .failure(let p): return .failure(p)
    }
    while path.hasSuffix("/") { path = path.dropLast() }
    return .success(UpstreamURL(scheme: scheme, host: hostPort.host, port: hostPort.port, pathPrefix: String(path)))
}

/// `HOST[:PORT]` of a URL (a name, IPv4, or bracketed IPv6), the host
/// lowercased. `form` says what was expected, `example` shows a bracketed
/// address, `shown` is the URL as errors may quote it.
func parseAuthority(_ authority: Substring, defaultPort: Int, form: String, example: String,
                    shown: String) -> Result<(host: String, port: Int), Problem> {
    var host: Substring
    var portText: Substring?
    if authority.hasPrefix("[") {
        guard let close = authority.firstIndex(of: "]") else { return .failure(Problem("\(form), got \(quoted(shown))")) }
        host = authority[authority.index(after: authority.startIndex)..<close]
        let after = authority[authority.index(after: close)...]
        guard isIPv6(host), after.isEmpty || after.hasPrefix(":") else {
            return .failure(Problem("\(form), got \(quoted(shown))"))
        }
        portText = after.isEmpty ? nil : after.dropFirst()
    } else if authority.filter({ $0 == ":" }).count > 1 {
        return .failure(Problem("IPv6 addresses need brackets, e.g. \(example), got \(quoted(shown))"))
    } else if let colon = authority.firstIndex(of: ":") {
        host = authority[..<colon]
        portText = authority[authority.index(after: colon)...]
    } else {
        host = authority
    }
    guard !host.isEmpty, host.contains(":") || isHostName(host) else {
        return .failure(Problem("missing or invalid host, \(form), got \(quoted(shown))"))
    }
    var port = defaultPort
    if let portText {
        guard let p = parsePort(portText), (1...65535).contains(p) else {
            return .failure(Problem("port must be 1-65535, got \(quoted(shown))"))
        }
        port = p
    }
    return .success((host.lowercased(), port))
}

func parseThreads(_ s: String) -> Result<Int?, Problem> {
    if s == "auto" { return .success(nil) }
    if let n = parseInteger(s), n >= 1 { return .success(n) }
    return .failure(Problem("expected a positive integer or \"auto\", got \(quoted(s))"))
}

func parseLogLevel(_ s: String) -> Result<LogLevel, Problem> {
    let lower = s.lowercased()
    if let level = LogLevel(rawValue: lower == "warn" ? "warning" : lower) { return .success(level) }
    let names = LogLevel.allCases.map(\.rawValue).joined(separator: ", ")
    return .failure(Problem("expected one of \(names), got \(quoted(s))"))
}

/// Decimal digits, optionally grouped with `_` as YAML 1.1 allows (`10_000`).
func parseInteger(_ s: String) -> Int? {
    let digits = s.filter { $0 != "_" }
    guard !digits.isEmpty, !s.hasPrefix("_"), digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
    return Int(digits)
}

private func parsePort(_ s: Substring) -> Int? {
    guard !s.isEmpty, s.count <= 5, s.allSatisfy({ $0.isASCII && $0.isNumber }) else { return nil }
    return Int(s)
}

private func isHostName(_ s: Substring) -> Bool {
    !s.isEmpty && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "." || $0 == "-" || $0 == "_") }
}

private func isIPv6(_ s: Substring) -> Bool {
    // Loose on purpose: getaddrinfo gives the real verdict at bind/connect time.
    s.contains(":") && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || ":.%".contains($0)) }
}

/// RFC 9110 token characters, for method names and header names.
func isToken(_ s: String) -> Bool {
    !s.isEmpty && s.utf8.allSatisfy { b in
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
            || "!#$%&'*+-.^_`|~".utf8.contains(b)
    }
}

/// Levenshtein distance, for "did you mean" hints on unknown keys.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    if a.isEmpty { return b.count }
    if b.isEmpty { return a.count }
    var prev = Array(0...b.count)
    for i in 1...a.count {
        var cur = [i] + Array(repeating: 0, count: b.count)
        for j in 1...b.count {
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        prev = cur
    }
    return prev[b.count]
}
