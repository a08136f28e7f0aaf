#if canImport(Glibc)
import Glibc
#endif

/// A job id: 16 bytes (128 bits) from the OS CSPRNG, written as base64url
/// without padding (22 characters). Ids are capabilities (SPEC §5): logs
/// show at most `logPrefix`.
///
/// Kept as two words, so hashing and comparing cost nothing and parsing an
/// id from a request allocates nothing; the text is made when written.
public struct JobID: Hashable, Sendable, CustomStringConvertible {
    private let high: UInt64
    private let low: UInt64

    public static let byteCount = 16
    public static let textLength = 22

    /// A fresh id from the OS CSPRNG.
    public static func random() -> JobID {
        var words: (UInt64, UInt64) = (0, 0)
        // getentropy(3) is getrandom(2) from the kernel's CSPRNG (<= 256 bytes).
        let rc = withUnsafeMutableBytes(of: &words) { getentropy($0.baseAddress!, byteCount) }
        precondition(rc == 0, "getentropy failed: \(errno)")
        return JobID(high: words.0, low: words.1)
    }

    private init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses the canonical text of an id; nil for anything else (so
    /// malformed ids never reach a store, and every id has one spelling).
    public init?(utf8 text: UnsafeBufferPointer<UInt8>) {
        guard text.count == JobID.textLength else { return nil }
        // 22 characters carry 132 bits: the 128 of the id, then 4 zero bits.
        var high: UInt64 = 0
        var low: UInt64 = 0
        for (i, c) in text.enumerated() {
            guard let v = base64URLValue(c) else { return nil }
            let value = UInt64(v)
            let bit = i * 6  // position of this character's first bit
            if i == JobID.textLength - 1 {
                guard value & 0x0F == 0 else { return nil }
                low |= value >> 4
            } else if bit + 6 <= 64 {
                high |= value << UInt64(58 - bit)
            } else if bit >= 64 {
                low |= value << UInt64(122 - bit)
            } else {
                // Straddles the two words: 64 - bit bits in high, the rest in low.
                let inHigh = 64 - bit
                high |= value >> UInt64(6 - inHigh)
                low |= (value & ((1 << UInt64(6 - inHigh)) - 1)) << UInt64(64 - (6 - inHigh))
            }
        }
        self.init(high: high, low: low)
    }

    public init?(_ text: some StringProtocol) {
        var s = String(text)
        guard let id = s.withUTF8({ JobID(utf8: $0) }) else { return nil }
        self = id
    }

    /// The 22 characters, on the stack, for as long as `body` runs.
    public func withUTF8<R>(_ body: (UnsafeBufferPointer<UInt8>) throws -> R) rethrows -> R {
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: JobID.textLength) { out in
            for i in 0..<JobID.textLength {
                out[i] = alphabet[Int(sextet(i))]
            }
            return try body(UnsafeBufferPointer(out))
        }
    }

    /// The i-th 6-bit group of the 128 bits followed by 4 zero bits.
    private func sextet(_ i: Int) -> UInt64 {
        let bit = i * 6
        if bit + 6 <= 64 { return high >> UInt64(58 - bit) & 63 }
        if i == JobID.textLength - 1 { return (low & 0x3) << 4 }
        if bit >= 64 { return low >> UInt64(122 - bit) & 63 }
        let inHigh = 64 - bit
        let top = (high & ((1 << UInt64(inHigh)) - 1)) << UInt64(6 - inHigh)
        return top | low >> UInt64(64 - (6 - inHigh))
    }

    public var text: String {
        withUTF8 { String(decoding: $0, as: UTF8.self) }
    }

    /// What logs may show (8 characters: a small string, no allocation).
    public var logPrefix: String {
        withUTF8 { String(decoding: $0.prefix(8), as: UTF8.self) }
    }

    public var description: String { logPrefix + "…" }
}

private let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

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

extension JobID {
    /// The id's 16 bytes, high word first (big-endian), for tests.
    public var bytes: [UInt8] {
        (0..<16).map { i in
            let word = i < 8 ? high : low
            return UInt8(truncatingIfNeeded: word >> UInt64(56 - 8 * (i % 8)))
        }
    }
}
