#if canImport(Glibc)
import Glibc
#endif

/// A webhook URL (`X-Callback-Url`) or an `allow` prefix, parsed by one set
/// of rules so that what is checked is what is called (SPEC §4):
///
/// - printable ASCII only; scheme `http` or `https` (any case); no
///   userinfo (`@` in the authority) and no fragment (`#` anywhere);
/// - host: a name of letters, digits, `-` and `.` (lower-cased, one
///   trailing dot dropped), a dotted IPv4 address, or a bracketed IPv6 one;
///   port 1-65535, 80 or 443 when absent;
/// - path: `/` when absent; dot segments removed (RFC 3986 §5.2.4), where a
///   percent-encoded dot counts as a dot; `%2F` is not a separator (it stays
///   part of its segment); bad percent-encoding and `\`, `<`, `>`, `"`,
///   `{`, `}`, `|`, `^`, `` ` `` are refused;
/// - the query, if any, is kept as it is.
public struct CallbackURL: Sendable, Equatable {
    public let isTLS: Bool
    public let host: String
    public let port: Int
    /// Normalized (dot segments removed): what is matched and what is sent.
    public let path: String
    public let query: String?

    public var scheme: String { isTLS ? "https" : "http" }

    /// The request target sent to the receiver.
    public var requestTarget: String { query.map { path + "?" + $0 } ?? path }

    /// The `Host` header: the port only when it is not the scheme's default.
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == (isTLS ? 443 : 80) ? h : "\(h):\(port)"
    }

    public var description: String { "\(scheme)://\(hostHeader)\(requestTarget)" }

    /// Whether this URL falls under `prefix`: the same scheme, host and
    /// effective port, and a path equal to the prefix's path or below it at a
    /// segment boundary (`/hooks` admits `/hooks` and `/hooks/x`, not
    /// `/hooksx`; `/hooks/` admits `/hooks/x`).
    public func isAllowed(by prefix: CallbackURL) -> Bool {
        guard isTLS == prefix.isTLS, host == prefix.host, port == prefix.port else { return false }
        let p = prefix.path
        if path == p || p.hasSuffix("/") && path.hasPrefix(p) { return true }
        return path.hasPrefix(p + "/")
    }

    public func isAllowed(byAny prefixes: [CallbackURL]) -> Bool {
        prefixes.contains { isAllowed(by: $0) }
    }

    /// The longest URL taken: longer ones are refused.
    public static let maxLength = 2048

    /// Parses `text`, or nil with no reason given: a refused callback URL is
    /// a 400 whatever is wrong with it.
    public static func parse(_ text: String) -> CallbackURL? {
        let bytes = Array(text.utf8)
        guard !bytes.isEmpty, bytes.count <= maxLength,
              bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "#") }) else { return nil }
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
            return nil
        }
        let authorityEnd = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") } ?? rest.endIndex
        let authority = rest[rest.startIndex..<authorityEnd]
        rest = rest[authorityEnd...]
        guard !authority.contains(UInt8(ascii: "@")), let (host, port) = parseAuthority(authority, isTLS: isTLS) else {
            return nil
        }
        var rawPath = rest
        var query: String?
        if let q = rest.firstIndex(of: UInt8(ascii: "?")) {
            rawPath = rest[rest.startIndex..<q]
            query = String(decoding: rest[(q + 1)...], as: UTF8.self)
        }
        guard let path = normalizePath(rawPath) else { return nil }
        if let query, !validPercentEncoding(Array(query.utf8)) { return nil }
        return CallbackURL(isTLS: isTLS, host: host, port: port, path: path, query: query)
    }

    private init(isTLS: Bool, host: String, port: Int, path: String, query: String?) {
        self.isTLS = isTLS
        self.host = host
        self.port = port
        self.path = path
        self.query = query
    }
}

private func parseAuthority(_ a: ArraySlice<UInt8>, isTLS: Bool) -> (String, Int)? {
    var hostBytes: ArraySlice<UInt8>
    var portBytes: ArraySlice<UInt8>?
    if a.first == UInt8(ascii: "[") {
        guard let close = a.firstIndex(of: UInt8(ascii: "]")) else { return nil }
        hostBytes = a[(a.startIndex + 1)..<close]
        let after = a[(close + 1)...]
        if !after.isEmpty {
            guard after.first == UInt8(ascii: ":") else { return nil }
            portBytes = after.dropFirst()
        }
        let literal = String(decoding: hostBytes, as: UTF8.self)
        var address = [UInt8](repeating: 0, count: 16)
        guard inet_pton(AF_INET6, literal, &address) == 1 else { return nil }
        hostBytes = ArraySlice(literal.lowercased().utf8)
    } else {
        if let colon = a.firstIndex(of: UInt8(ascii: ":")) {
            hostBytes = a[a.startIndex..<colon]
            portBytes = a[(colon + 1)...]
        } else {
            hostBytes = a
        }
        if hostBytes.last == UInt8(ascii: ".") { hostBytes = hostBytes.dropLast() }
        guard !hostBytes.isEmpty, hostBytes.count <= 253, hostBytes.first != UInt8(ascii: "."),
              hostBytes.allSatisfy({ isAlphaNumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }),
              !hostBytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false).contains(where: \.isEmpty)
        else { return nil }
        hostBytes = ArraySlice(hostBytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 })
    }
    var port = isTLS ? 443 : 80
    if let portBytes {
        guard !portBytes.isEmpty, portBytes.count <= 5, portBytes.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
              let p = Int(String(decoding: portBytes, as: UTF8.self)), (1...65535).contains(p) else { return nil }
        port = p
    }
    return (String(decoding: hostBytes, as: UTF8.self), port)
}

private func isAlphaNumeric(_ b: UInt8) -> Bool {
    (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x7A)
}

private func isHex(_ b: UInt8) -> Bool {
    (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x66)
}

/// Every `%` starts `%HH`.
private func validPercentEncoding(_ s: [UInt8]) -> Bool {
    var i = 0
    while i < s.count {
        if s[i] == UInt8(ascii: "%") {
            guard i + 2 < s.count, isHex(s[i + 1]), isHex(s[i + 2]) else { return false }
            i += 3
        } else {
            i += 1
        }
    }
    return true
}

/// Bytes a path may not hold (browsers and servers read some of them as
/// separators or quote them differently).
private let refusedInPath: Set<UInt8> = Set("\\<>\"{}|^`".utf8)

/// RFC 3986 §5.2.4 over segments, `%2e` read as `.`; nil if malformed.
private func normalizePath(_ raw: ArraySlice<UInt8>) -> String? {
    let bytes = Array(raw)
    guard validPercentEncoding(bytes), !bytes.contains(where: refusedInPath.contains) else { return nil }
    if bytes.isEmpty { return "/" }
    guard bytes.first == UInt8(ascii: "/") else { return nil }
    let segments = bytes.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    var out: [ArraySlice<UInt8>] = []
    for (i, segment) in segments.enumerated() {
        let last = i == segments.count - 1
        switch dotValue(segment) {
        case 1:
            if last { out.append([]) }
        case 2:
            if !out.isEmpty { out.removeLast() }
            if last { out.append([]) }
        default:
            out.append(segment)
        }
    }
    return "/" + out.map { String(decoding: $0, as: UTF8.self) }.joined(separator: "/")
}

/// 1 for a `.` segment, 2 for `..` (either spelled with `%2e`), else 0.
private func dotValue(_ segment: ArraySlice<UInt8>) -> Int {
    var dots = 0
    var i = segment.startIndex
    while i < segment.endIndex {
        if segment[i] == UInt8(ascii: ".") {
            i += 1
        } else if segment[i] == UInt8(ascii: "%"), i + 2 < segment.endIndex,
                  segment[i + 1] == UInt8(ascii: "2"), segment[i + 2] | 0x20 == UInt8(ascii: "e") {
            i += 3
        } else {
            return 0
        }
        dots += 1
        if dots > 2 { return 0 }
    }
    return dots
}
