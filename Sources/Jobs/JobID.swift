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

    fileprivate init(high: UInt64, low: UInt64) {
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
        var words = (high.bigEndian, low.bigEndian)
        return try withUnsafeBytes(of: &words) { bytes in
            try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: JobID.textLength) { out in
                // Five groups of 3 bytes -> 4 characters, then 1 byte -> 2.
                var o = 0
                var i = 0
                while i < 15 {
                    let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
                    out[o] = alphabet[Int(v >> 18)]
                    out[o + 1] = alphabet[Int(v >> 12 & 63)]
                    out[o + 2] = alphabet[Int(v >> 6 & 63)]
                    out[o + 3] = alphabet[Int(v & 63)]
                    o += 4
                    i += 3
                }
                out[20] = alphabet[Int(bytes[15] >> 2)]
                out[21] = alphabet[Int(bytes[15] & 3) << 4]
                return try body(UnsafeBufferPointer(out))
            }
        }
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

/// Each byte's value in the base64url alphabet, 0xFF for the others.
private let alphabetValues: [UInt8] = {
    var table = [UInt8](repeating: 0xFF, count: 256)
    for (value, c) in alphabet.enumerated() { table[Int(c)] = UInt8(value) }
    return table
}()

@inline(__always)
func base64URLValue(_ c: UInt8) -> UInt8? {
    let v = alphabetValues[Int(c)]
    return v == 0xFF ? nil : v
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

/// Fresh ids for one thread: 256 bytes of OS CSPRNG output per
/// `getentropy(3)` (its limit), 16 ids per system call instead of one. The
/// bytes are the kernel's, used once each, and never leave the owner's
/// thread; not Sendable (one per event loop).
public final class JobIDSource {
    private static let batch = 16
    private var words = [UInt64](repeating: 0, count: 2 * batch)
    private var next = batch

    public init() {}

    public func make() -> JobID {
        if next == JobIDSource.batch {
            let rc = words.withUnsafeMutableBytes { getentropy($0.baseAddress!, $0.count) }
            precondition(rc == 0, "getentropy failed: \(errno)")
            next = 0
        }
        let id = JobID(high: words[2 * next], low: words[2 * next + 1])
        // Zeroed once issued: the buffer only ever holds ids nobody has.
        words[2 * next] = 0
        words[2 * next + 1] = 0
        next += 1
        return id
    }
}
