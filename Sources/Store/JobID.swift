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

    /// `JobIDMap` shards by an id's first `shardBits` bits.
    static let shardBits = 6

    /// Which of `JobIDMap`'s shards holds this id.
    var shard: Int { Int(truncatingIfNeeded: high >> UInt64(64 - JobID.shardBits)) }

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
        try withUnsafeTemporaryAllocation(of: UInt8.self, capacity: JobID.textLength) { out in
            encode(into: out.baseAddress!)
            return try body(UnsafeBufferPointer(out))
        }
    }

    /// Writes the 22 characters at `out`: the 128 bits six at a time, high
    /// bits first (character 10 straddles the words), the last character
    /// carrying 2 bits and 4 zeros.
    @inline(__always)
    public func encode(into out: UnsafeMutablePointer<UInt8>) {
        let t = JobID.alphabet.utf8Start
        let h = high, l = low
        out[0] = t[Int(truncatingIfNeeded: h >> 58)]
        out[1] = t[Int(truncatingIfNeeded: h >> 52 & 63)]
        out[2] = t[Int(truncatingIfNeeded: h >> 46 & 63)]
        out[3] = t[Int(truncatingIfNeeded: h >> 40 & 63)]
        out[4] = t[Int(truncatingIfNeeded: h >> 34 & 63)]
        out[5] = t[Int(truncatingIfNeeded: h >> 28 & 63)]
        out[6] = t[Int(truncatingIfNeeded: h >> 22 & 63)]
        out[7] = t[Int(truncatingIfNeeded: h >> 16 & 63)]
        out[8] = t[Int(truncatingIfNeeded: h >> 10 & 63)]
        out[9] = t[Int(truncatingIfNeeded: h >> 4 & 63)]
        out[10] = t[Int(truncatingIfNeeded: (h << 2 | l >> 62) & 63)]
        out[11] = t[Int(truncatingIfNeeded: l >> 56 & 63)]
        out[12] = t[Int(truncatingIfNeeded: l >> 50 & 63)]
        out[13] = t[Int(truncatingIfNeeded: l >> 44 & 63)]
        out[14] = t[Int(truncatingIfNeeded: l >> 38 & 63)]
        out[15] = t[Int(truncatingIfNeeded: l >> 32 & 63)]
        out[16] = t[Int(truncatingIfNeeded: l >> 26 & 63)]
        out[17] = t[Int(truncatingIfNeeded: l >> 20 & 63)]
        out[18] = t[Int(truncatingIfNeeded: l >> 14 & 63)]
        out[19] = t[Int(truncatingIfNeeded: l >> 8 & 63)]
        out[20] = t[Int(truncatingIfNeeded: l >> 2 & 63)]
        out[21] = t[Int(truncatingIfNeeded: l << 4 & 63)]
    }

    static let alphabet: StaticString = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

    public var text: String {
        withUTF8 { String(decoding: $0, as: UTF8.self) }
    }

    /// What logs may show (8 characters: a small string, no allocation).
    public var logPrefix: String {
        withUTF8 { String(decoding: $0.prefix(8), as: UTF8.self) }
    }

    public var description: String { logPrefix + "…" }
}

/// Each byte's value in the base64url alphabet, 0xFF for the others.
private let alphabetValues: [UInt8] = {
    var table = [UInt8](repeating: 0xFF, count: 256)
    let alphabet = UnsafeBufferPointer(start: JobID.alphabet.utf8Start, count: JobID.alphabet.utf8CodeUnitCount)
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
