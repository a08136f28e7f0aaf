#if canImport(Glibc)
import Glibc
#endif

/// A job id: 16 bytes (128 bits) from the OS CSPRNG, base64url without
/// padding (22 characters). Ids are capabilities (SPEC §5): logs show at
/// most `logPrefix`.
public struct JobID: Hashable, Sendable, CustomStringConvertible {
    public let text: String

    public static let byteCount = 16
    public static let textLength = 22

    /// A fresh id from the OS CSPRNG.
    public static func random() -> JobID {
        var bytes = [UInt8](repeating: 0, count: byteCount)
        // getentropy(3) is getrandom(2) from the kernel's CSPRNG (<= 256 bytes).
        let rc = bytes.withUnsafeMutableBytes { getentropy($0.baseAddress!, byteCount) }
        precondition(rc == 0, "getentropy failed: \(errno)")
        return JobID(unchecked: base64URL(bytes))
    }

    /// Parses an id from a URL path segment; nil unless it has the exact
    /// shape of one (so malformed ids never reach a store).
    public init?(_ text: some StringProtocol) {
        guard text.utf8.count == JobID.textLength,
              text.utf8.allSatisfy({ base64URLValue($0) != nil }) else { return nil }
        self.text = String(text)
    }

    private init(unchecked text: String) { self.text = text }

    /// What logs may show.
    public var logPrefix: Substring { text.prefix(8) }

    public var description: String { String(logPrefix) + "…" }
}

private let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

func base64URLValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "A")...UInt8(ascii: "Z"): return c - UInt8(ascii: "A")
    case UInt8(ascii: "a")...UInt8(ascii: "z"): return c - UInt8(ascii: "a") + 26
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0") + 52
    case UInt8(ascii: "-"): return 62
    case UInt8(ascii: "_"): return 63
    default: return nil
    }
}

/// RFC 4648 §5 base64url, unpadded.
func base64URL(_ bytes: [UInt8]) -> String {
    var out = [UInt8]()
    out.reserveCapacity((bytes.count * 4 + 2) / 3)
    var i = 0
    while i + 3 <= bytes.count {
        let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
        out += [alphabet[Int(v >> 18 & 63)], alphabet[Int(v >> 12 & 63)], alphabet[Int(v >> 6 & 63)], alphabet[Int(v & 63)]]
        i += 3
    }
    let rest = bytes.count - i
    if rest == 1 {
        let v = UInt32(bytes[i]) << 16
        out += [alphabet[Int(v >> 18 & 63)], alphabet[Int(v >> 12 & 63)]]
    } else if rest == 2 {
        let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
        out += [alphabet[Int(v >> 18 & 63)], alphabet[Int(v >> 12 & 63)], alphabet[Int(v >> 6 & 63)]]
    }
    return String(decoding: out, as: UTF8.self)
}
