/// Header names the proxy acts on, recognised once per field while the head
/// is validated, so later passes switch on a small enum instead of comparing
/// bytes again.
public enum HeaderKind: UInt8, Sendable {
    case other
    case host
    case contentLength
    case transferEncoding
    case connection
    case keepAlive
    case proxyConnection
    case te
    case trailer
    case upgrade
    case expect
    case xForwardedFor
    case xForwardedProto
    case xForwardedHost
    case contentType
    /// `X-Callback-Url` (SPEC §4): a webhook asked for.
    case callbackURL

    /// Hop-by-hop fields (RFC 9110 §7.6.1) plus the framing ones the proxy
    /// always writes itself.
    @inlinable
    public var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .upgrade,
             .transferEncoding, .contentLength:
            return true
        default:
            return false
        }
    }

    static func classify(_ p: UnsafePointer<UInt8>, _ n: Int) -> HeaderKind {
        switch n {
        case 2: return equalsLower(p, n, "te") ? .te : .other
        case 4: return equalsLower(p, n, "host") ? .host : .other
        case 6: return equalsLower(p, n, "expect") ? .expect : .other
        case 7:
            if equalsLower(p, n, "trailer") { return .trailer }
            if equalsLower(p, n, "upgrade") { return .upgrade }
            return .other
        case 10:
            if equalsLower(p, n, "connection") { return .connection }
            if equalsLower(p, n, "keep-alive") { return .keepAlive }
            return .other
        case 12: return equalsLower(p, n, "content-type") ? .contentType : .other
        case 14:
            if equalsLower(p, n, "content-length") { return .contentLength }
            if equalsLower(p, n, "x-callback-url") { return .callbackURL }
            return .other
        case 15: return equalsLower(p, n, "x-forwarded-for") ? .xForwardedFor : .other
        case 16:
            if equalsLower(p, n, "proxy-connection") { return .proxyConnection }
            if equalsLower(p, n, "x-forwarded-host") { return .xForwardedHost }
            return .other
        case 17:
            if equalsLower(p, n, "transfer-encoding") { return .transferEncoding }
            if equalsLower(p, n, "x-forwarded-proto") { return .xForwardedProto }
            return .other
        default: return .other
        }
    }
}

/// RFC 9110 `tchar` as a 128-bit set: "!#$%&'*+-.^_`|~", digits, letters.
@inline(__always)
func isTchar(_ c: UInt8) -> Bool {
    let low: UInt64 = 0x03FF_6CFA_0000_0000   // 0x00-0x3F: ! # $ % & ' * + - . 0-9
    let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE  // 0x40-0x7F: A-Z ^ _ ` a-z | ~
    if c < 64 { return low >> UInt64(c) & 1 == 1 }
    if c < 128 { return high >> UInt64(c - 64) & 1 == 1 }
    return false
}
