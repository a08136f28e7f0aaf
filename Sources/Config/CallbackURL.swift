#if canImport(Glibc)
import Glibc
#endif

/// A webhook URL (`X-Callback-Url`) or an `allow` prefix, parsed by one set
/// of rules so that what is checked is what is called (SPEC §4). It lives in
/// Config because the loader parses `allow` prefixes with it and Jobs parses
/// the header with it.
///
/// - printable ASCII only; scheme `http` or `https` (any case); no
///   userinfo (`@` in the authority) and no fragment (`#` anywhere);
/// - host: a name of letters, digits, `-` and `.` (lower-cased, one
///   trailing dot dropped, labels of 1-63 bytes), a dotted-decimal IPv4
///   address (a name ending in a number must be one: `127.1`, `0x7f.1`,
///   `010.0.0.1` are refused), or a bracketed IPv6 one (canonical form);
///   port 1-65535, 80 or 443 when absent;
/// - path: `/` when absent; percent-encoding normalized (RFC 3986 §6.2.2:
///   hex upper-cased, unreserved bytes decoded, so `%2e` is `.`), then dot
///   segments removed (§5.2.4). `%2F` and `%5C` are not separators: they
///   stay, encoded, in their segment. A segment that would read as `.` or
///   `..` to a receiver that splits at `%2F`/`%5C` or drops `;` parameters
///   (`..%2F`, `%2F..`, `..;x`) is refused. Bad percent-encoding and `\`,
///   `<`, `>`, `"`, `{`, `}`, `|`, `^`, `` ` `` are refused;
/// - the query, if any, is kept as it is (its percent-encoding checked).
public struct CallbackURL: Sendable, Equatable, CustomStringConvertible {
    public let isTLS: Bool
    /// Lower-cased; an IPv6 address without brackets.
    public let host: String
    /// The effective port.
    public let port: Int
    /// Normalized: what is matched and what is sent.
    public let path: String
    public let query: String?
    /// The request target sent to the receiver.
    public let requestTarget: String
    /// The `Host` header: the port only when it is not the scheme's default.
    public let hostHeader: String

    private init(isTLS: Bool, host: String, port: Int, path: String, query: String?) {
        self.isTLS = isTLS
        self.host = host
        self.port = port
        self.path = path
        self.query = query
        requestTarget = query.map { path + "?" + $0 } ?? path
        let h = host.contains(":") ? "[\(host)]" : host
        hostHeader = port == (isTLS ? 443 : 80) ? h : "\(h):\(port)"
    }

    public var scheme: String { isTLS ? "https" : "http" }

    /// The normalized URL; `parse(description)` gives this value back.
    public var description: String { "\(scheme)://\(hostHeader)\(requestTarget)" }

    /// Whether this URL falls under `prefix`: the same scheme, host and
    /// effective port, and a path under the prefix's at a segment boundary,
    /// as Envoy's `path_separated_prefix`: `/hooks` admits `/hooks`,
    /// `/hooks/` and `/hooks/x`, not `/hooksx`; `/hooks/` admits `/hooks/`
    /// and `/hooks/x`, not `/hooks`. The prefix's query is not compared
    /// (the loader refuses prefixes with one).
    public func isAllowed(by prefix: CallbackURL) -> Bool {
        guard isTLS == prefix.isTLS, host == prefix.host, port == prefix.port else { return false }
        let p = prefix.path
        guard path.hasPrefix(p) else { return false }
        return path.utf8.count == p.utf8.count || p.hasSuffix("/")
            || path.utf8[path.utf8.index(path.utf8.startIndex, offsetBy: p.utf8.count)] == UInt8(ascii: "/")
    }

    /// Whether any of `prefixes` admits this URL.
    public func isAllowed(byAny prefixes: [CallbackURL]) -> Bool {
        prefixes.contains { isAllowed(by: $0) }
    }

    /// The longest URL taken: longer ones are refused.
    public static let maxLength = 2048

    /// Parses `text`, or nil: a refused callback URL is a 400 whatever is
    /// wrong with it.
    public static func parse(_ text: String) -> CallbackURL? {
        try? parsing(text).get()
    }

    /// Parses `text`, or says what is wrong with it (for config errors).
    public static func parsing(_ text: String) -> Result<CallbackURL, Refusal> {
        let bytes = Array(text.utf8)
        if bytes.isEmpty { return .failure(.empty) }
        if bytes.count > maxLength { return .failure(.tooLong) }
        guard bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return .failure(.badByte) }
        if bytes.contains(UInt8(ascii: "#")) { return .failure(.fragment) }
        let lower = String(decoding: bytes.prefix(8).map { $0 | 0x20 }, as: UTF8.self)
        let isTLS: Bool
        var rest: ArraySlice<UInt8>
        if lower.hasPrefix("https://") {
            isTLS = true
            rest = bytes[8...]
        } else if lower.hasPrefix("http://") {
            isTLS = false
            rest = bytes[7...]
        } else {
            return .failure(.scheme)
        }
        let authorityEnd = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? rest.endIndex
        let authority = rest[rest.startIndex..<authorityEnd]
        rest = rest[authorityEnd...]
        if authority.contains(UInt8(ascii: "@")) { return .failure(.userinfo) }
        let host: String, port: Int
        switch parseAuthority(authority, isTLS: isTLS) {
        case .success(let hp): (host, port) = hp
        case .failure(let r): return .failure(r)
        }
        var rawPath = rest
        var query: String?
        if let q = rest.firstIndex(of: UInt8(ascii: "?")) {
            rawPath = rest[rest.startIndex..<q]
            let queryBytes = rest[(q + 1)...]
            guard normalizedPercentEncoding(queryBytes) != nil else { return .failure(.percentEncoding) }
            query = String(decoding: queryBytes, as: UTF8.self)
        }
        switch normalizePath(rawPath) {
        case .success(let path): return .success(CallbackURL(isTLS: isTLS, host: host, port: port, path: path, query: query))
        case .failure(let r): return .failure(r)
        }
    }

    /// Why a URL was refused.
    public enum Refusal: Error, Sendable, Equatable, CustomStringConvertible {
        case empty, tooLong, badByte, fragment, scheme, userinfo, host, numericHost, port
        case percentEncoding, pathByte, hiddenDotSegment

        public var description: String {
            switch self {
            case .empty: "empty"
            case .tooLong: "longer than \(CallbackURL.maxLength) bytes"
            case .badByte: "only printable ASCII is allowed (no spaces, no control or non-ASCII bytes)"
            case .fragment: "no fragment (#) is allowed"
            case .scheme: "the scheme must be http:// or https://"
            case .userinfo: "no userinfo (@) is allowed"
            case .host: "the host must be a DNS name, an IPv4 address or a bracketed IPv6 address"
            case .numericHost: "a host ending in a number must be a dotted-decimal IPv4 address"
            case .port: "the port must be 1-65535"
            case .percentEncoding: "bad percent-encoding"
            case .pathByte: #"the path may not hold \ < > " { } | ^ or `"#
            case .hiddenDotSegment: "a path segment hides a dot segment (..%2F, %2F.., ..;)"
            }
        }
    }
}

private func parseAuthority(_ a: ArraySlice<UInt8>, isTLS: Bool) -> Result<(String, Int), CallbackURL.Refusal> {
    let host: String
    var portBytes: ArraySlice<UInt8>?
    if a.first == UInt8(ascii: "[") {
        guard let close = a.firstIndex(of: UInt8(ascii: "]")) else { return .failure(.host) }
        let after = a[(close + 1)...]
        if !after.isEmpty {
            guard after.first == UInt8(ascii: ":") else { return .failure(.host) }
            portBytes = after.dropFirst()
        }
        guard let canonical = canonicalIPv6(String(decoding: a[(a.startIndex + 1)..<close], as: UTF8.self)) else {
            return .failure(.host)
        }
        host = canonical
    } else {
        var hostBytes = a
        if let colon = a.firstIndex(of: UInt8(ascii: ":")) {
            hostBytes = a[a.startIndex..<colon]
            portBytes = a[(colon + 1)...]
        }
        if hostBytes.last == UInt8(ascii: ".") { hostBytes = hostBytes.dropLast() }
        let labels = hostBytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard !hostBytes.isEmpty, hostBytes.count <= 253,
              hostBytes.allSatisfy({ isAlphaNumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }),
              labels.allSatisfy({ !$0.isEmpty && $0.count <= 63 })
        else { return .failure(.host) }
        if let last = labels.last, endsInNumber(last), !isDottedDecimalIPv4(labels) { return .failure(.numericHost) }
        host = String(decoding: hostBytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
    }
    var port = isTLS ? 443 : 80
    if let portBytes {
        guard !portBytes.isEmpty, portBytes.count <= 5, portBytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let p = Int(String(decoding: portBytes, as: UTF8.self)), (1...65535).contains(p)
        else { return .failure(.port) }
        port = p
    }
    return .success((host, port))
}

/// inet_pton then inet_ntop: `0:0::1` and `::1` are one host. No zone ids.
private func canonicalIPv6(_ literal: String) -> String? {
    var address = in6_addr()
    guard inet_pton(AF_INET6, literal, &address) == 1 else { return nil }
    var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
    guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return nil }
    return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// The WHATWG URL test: the last label is digits, or `0x` and hex digits.
private func endsInNumber(_ label: ArraySlice<UInt8>) -> Bool {
    if label.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) { return true }
    let rest = label.dropFirst(2)
    return label.count >= 2 && label.first == UInt8(ascii: "0") && label.dropFirst().first! | 0x20 == UInt8(ascii: "x")
        && rest.allSatisfy(isHex)
}

/// Four decimal labels 0-255 without leading zeros.
private func isDottedDecimalIPv4(_ labels: [ArraySlice<UInt8>]) -> Bool {
    labels.count == 4 && labels.allSatisfy { l in
        l.count <= 3 && l.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } && (l.count == 1 || l.first != UInt8(ascii: "0"))
            && Int(String(decoding: l, as: UTF8.self))! <= 255
    }
}

private func isAlphaNumeric(_ b: UInt8) -> Bool {
    (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x7A)
}

private func isHex(_ b: UInt8) -> Bool {
    (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x66)
}

private func hexValue(_ b: UInt8) -> UInt8 {
    b <= 0x39 ? b - 0x30 : (b | 0x20) - 0x61 + 10
}

/// RFC 3986 unreserved: ALPHA DIGIT - . _ ~
private func isUnreserved(_ b: UInt8) -> Bool {
    isAlphaNumeric(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: ".") || b == UInt8(ascii: "_")
        || b == UInt8(ascii: "~")
}

/// `s` with every `%HH` of an unreserved byte decoded and the others'
/// hex upper-cased; nil if a `%` does not start `%HH`.
private func normalizedPercentEncoding(_ s: ArraySlice<UInt8>) -> [UInt8]? {
    var out: [UInt8] = []
    out.reserveCapacity(s.count)
    var i = s.startIndex
    while i < s.endIndex {
        guard s[i] == UInt8(ascii: "%") else {
            out.append(s[i])
            i += 1
            continue
        }
        guard i + 2 < s.endIndex, isHex(s[i + 1]), isHex(s[i + 2]) else { return nil }
        let v = hexValue(s[i + 1]) << 4 | hexValue(s[i + 2])
        if isUnreserved(v) {
            out.append(v)
        } else {
            out.append(contentsOf: [UInt8(ascii: "%"), upperHex(s[i + 1]), upperHex(s[i + 2])])
        }
        i += 3
    }
    return out
}

private func upperHex(_ b: UInt8) -> UInt8 {
    b >= 0x61 ? b - 0x20 : b
}

/// Bytes a path may not hold (browsers and servers read some of them as
/// separators or quote them differently).
private let refusedInPath: Set<UInt8> = Set("\\<>\"{}|^`".utf8)

/// Normalized percent-encoding, then RFC 3986 §5.2.4 over segments.
private func normalizePath(_ raw: ArraySlice<UInt8>) -> Result<String, CallbackURL.Refusal> {
    if raw.contains(where: refusedInPath.contains) { return .failure(.pathByte) }
    guard let bytes = normalizedPercentEncoding(raw) else { return .failure(.percentEncoding) }
    if bytes.isEmpty { return .success("/") }
    let segments = bytes.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    var out: [ArraySlice<UInt8>] = []
    for (i, segment) in segments.enumerated() {
        let last = i == segments.count - 1
        if isDotSegment(segment) {
            if segment.count == 2, !out.isEmpty { out.removeLast() }
            if last { out.append([]) }
        } else if hidesDotSegment(segment) {
            return .failure(.hiddenDotSegment)
        } else {
            out.append(segment)
        }
    }
    return .success("/" + out.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/"))
}

private func isDotSegment(_ s: ArraySlice<UInt8>) -> Bool {
    (s.count == 1 || s.count == 2) && s.allSatisfy { $0 == UInt8(ascii: ".") }
}

/// Whether `segment`, split at `%2F` and `%5C` (already upper-cased), has a
/// piece that is `.` or `..` once a `;` parameter is dropped.
private func hidesDotSegment(_ segment: ArraySlice<UInt8>) -> Bool {
    var pieceStart = segment.startIndex
    var i = segment.startIndex
    func check(_ end: Int) -> Bool {
        let piece = segment[pieceStart..<end]
        return isDotSegment(piece.prefix { $0 != UInt8(ascii: ";") })
    }
    while i < segment.endIndex {
        if segment[i] == UInt8(ascii: "%"), i + 2 < segment.endIndex,
           segment[i + 1] == UInt8(ascii: "2") && segment[i + 2] == UInt8(ascii: "F")
            || segment[i + 1] == UInt8(ascii: "5") && segment[i + 2] == UInt8(ascii: "C") {
            if check(i) { return true }
            i += 3
            pieceStart = i
        } else {
            i += 1
        }
    }
    return check(segment.endIndex)
}
