import Config
import Store

/// `parseDuration` (configuration values, `--async-after`): what it reads is
/// digits and unit letters only, never negative, and its canonical form
/// (`formatDuration`) reads back to the same duration.
enum DurationTarget {
    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let s = String(decoding: data, as: UTF8.self)
        guard let d = parseDuration(s) else { return }
        require(s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x7A) }, "\(s.debugDescription) read as \(d)")
        require(d >= .zero, "\(s.debugDescription) read as \(d)")
        let canonical = formatDuration(d)
        require(parseDuration(canonical) == d, "\(s.debugDescription) read as \(d), written \(canonical), read back differently")
        require(formatDuration(parseDuration(canonical)!) == canonical, "\(canonical) is not canonical")
    }
}

/// `parseSize`: digits and a unit only, never negative, and `formatSize`
/// reads back to the same count.
enum SizeTarget {
    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let s = String(decoding: data, as: UTF8.self)
        guard let n = parseSize(s) else { return }
        require(s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || "KMGTiB".utf8.contains($0) }, "\(s.debugDescription) read as \(n)")
        require(n >= 0, "\(s.debugDescription) read as \(n)")
        let canonical = formatSize(n)
        require(parseSize(canonical) == n, "\(s.debugDescription) read as \(n), written \(canonical), read back differently")
    }
}

/// `JobID(utf8:)`, which reads ids from request paths: an id has exactly one
/// spelling (what parses is what `encode` writes), and its bytes are the
/// base64url decoding of that text, checked by a decoder written here.
/// The input's first 16 bytes are also encoded here and must parse to them.
enum JobIDTarget {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        if let id = JobID(utf8: data) {
            require(id.withUTF8 { Array($0) } == Array(data), "\(text(data)) parses, but is written \(id.text)")
            require(id.bytes == decode(Array(data)), "\(text(data)) parses to other bytes than base64url's")
            require(JobID(id.text) == id, "the text of \(id.text) does not parse back")
        } else {
            require(decode(Array(data)) == nil, "\(text(data)) is a canonical base64url id, refused")
        }
        if data.count >= 16 {
            let bytes = Array(data.prefix(16))
            let encoded = encode(bytes)
            guard let id = encoded.withUnsafeBufferPointer({ JobID(utf8: $0) }) else {
                fatalError("\(text(encoded)) (base64url of 16 bytes) refused")
            }
            require(id.bytes == bytes, "\(text(encoded)) parses to other bytes")
        }
    }

    /// 16 bytes of 22 base64url characters without padding whose last
    /// character's 4 low bits are zero (the one spelling); nil for others.
    static func decode(_ text: [UInt8]) -> [UInt8]? {
        guard text.count == 22 else { return nil }
        var bits: UInt32 = 0, count = 0
        var out: [UInt8] = []
        for c in text {
            guard let v = alphabet.firstIndex(of: c) else { return nil }
            bits = bits << 6 | UInt32(v)
            count += 6
            if count >= 8 {
                count -= 8
                out.append(UInt8(truncatingIfNeeded: bits >> UInt32(count)))
                bits &= (1 << UInt32(count)) - 1
            }
        }
        guard count == 4, bits == 0, out.count == 16 else { return nil }
        return out
    }

    static func encode(_ bytes: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var bits: UInt32 = 0, count = 0
        for b in bytes {
            bits = bits << 8 | UInt32(b)
            count += 8
            while count >= 6 {
                count -= 6
                out.append(alphabet[Int(bits >> UInt32(count) & 63)])
            }
            bits &= (1 << UInt32(count)) - 1
        }
        if count > 0 { out.append(alphabet[Int(bits << UInt32(6 - count) & 63)]) }
        return out
    }
}
