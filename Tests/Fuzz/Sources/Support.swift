import HTTP

#if canImport(Glibc)
import Glibc
#endif

/// A property of the code under test. A broken one traps, which libFuzzer
/// reports like any crash: the input it wrote is the reproducer.
func require(_ condition: Bool, _ message: @autoclosure () -> String, file: StaticString = #fileID, line: UInt = #line) {
    if !condition { fatalError(message(), file: file, line: line) }
}

// MARK: - Arrival

/// A small deterministic generator (SplitMix64). Seeded from the input, so
/// a reproducer replays the same pieces without any prefix bytes of ours.
struct Generator {
    private var state: UInt64

    init(seed bytes: UnsafeBufferPointer<UInt8>) {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325  // FNV-1a
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01B3 }
        state = h
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func next(upTo n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// How a byte stream comes off a socket: in pieces of 1 to 64 bytes (many
/// of 1 to 3), each appended to the buffer's last chain or, as libevent
/// does when a read fills one, in a chain of its own.
struct Piece {
    var range: Range<Int>
    var ownChain: Bool
}

func arrival(of data: UnsafeBufferPointer<UInt8>) -> [Piece] {
    var g = Generator(seed: data)
    var pieces: [Piece] = []
    var at = 0
    while at < data.count {
        let r = g.next()
        let n = r & 3 == 0 ? Int((r >> 8) % 3) + 1 : Int((r >> 8) % 64) + 1
        let end = min(at + n, data.count)
        pieces.append(Piece(range: at..<end, ownChain: r & 4 == 0))
        at = end
    }
    return pieces
}

extension EventBuffer {
    convenience init(_ bytes: UnsafeBufferPointer<UInt8>) {
        self.init()
        append(bytes)
    }

    /// Appends a piece; one of its own goes through `staging`, whose chain
    /// is moved over whole.
    func append(_ data: UnsafeBufferPointer<UInt8>, _ piece: Piece, staging: EventBuffer) {
        let bytes = UnsafeBufferPointer(rebasing: data[piece.range])
        if piece.ownChain {
            staging.append(bytes)
            moveAll(from: staging)
        } else {
            append(bytes)
        }
    }

    /// The first byte, without removing it.
    var first: UInt8? {
        var byte: UInt8?
        forEachSegment { segment in
            if byte == nil, let b = segment.first { byte = b }
        }
        return byte
    }
}

/// `bytes` as a buffer for as long as `body` runs.
func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeBufferPointer<UInt8>) -> R) -> R {
    bytes.withUnsafeBufferPointer(body)
}

// MARK: - Transcripts

/// What a conversation read, as a digest: cheap enough to take on every
/// run and compare between arrivals. Taken `verbose`, the same as text,
/// for the message when two digests differ.
struct Transcript {
    private(set) var digest: UInt64 = 0xCBF2_9CE4_8422_2325
    private(set) var lines: [String]?
    private var body: [UInt8] = []

    init(verbose: Bool) {
        lines = verbose ? [] : nil
    }

    private mutating func mix(_ b: UInt8) {
        digest = (digest ^ UInt64(b)) &* 0x100_0000_01B3  // FNV-1a
    }

    private mutating func mix(_ n: Int64) {
        for i in 0..<8 { mix(UInt8(truncatingIfNeeded: n >> (8 * i))) }
    }

    private mutating func mix(_ tag: StaticString) {
        for b in UnsafeBufferPointer(start: tag.utf8Start, count: tag.utf8CodeUnitCount) { mix(b) }
    }

    mutating func record(_ tag: StaticString, _ bytes: UnsafeBufferPointer<UInt8>) {
        mix(tag)
        mix(Int64(bytes.count))
        for b in bytes { mix(b) }
        lines?.append("\(tag) \(text(bytes))")
    }

    mutating func record(_ tag: StaticString, _ bytes: StaticString) {
        record(tag, UnsafeBufferPointer(start: bytes.utf8Start, count: bytes.utf8CodeUnitCount))
    }

    mutating func record(_ tag: StaticString, _ value: Int64) {
        mix(tag)
        mix(value)
        lines?.append("\(tag) \(value)")
    }

    mutating func record(_ tag: StaticString, _ value: Int) { record(tag, Int64(value)) }
    mutating func record(_ tag: StaticString, _ value: Bool) { record(tag, value ? 1 : 0) }

    /// Takes all of `buffer` as body bytes: the digest does not see how
    /// they were cut.
    mutating func stream(_ buffer: EventBuffer) {
        buffer.forEachSegment { segment in
            for b in segment { mix(b) }
            if lines != nil { body += segment }
        }
        buffer.removeAll()
    }

    /// The end of the body bytes streamed since the last end.
    mutating func endBody(_ tag: StaticString, count: Int64) {
        mix(tag)
        mix(count)
        lines?.append("\(tag) \(count) \(text(body))")
        body = []
    }

    mutating func record(_ tag: StaticString, _ framing: BodyFraming) {
        switch framing {
        case .none: record(tag, -1)
        case .length(let n): record(tag, n)
        case .chunked: record(tag, -2)
        case .untilClose: record(tag, -3)
        }
    }

    mutating func record(_ error: HTTPError) {
        record("error", error.status)
        record("code", error.code)
        record("message", error.message)
    }

    /// The fields as the layers above read them.
    mutating func recordFields(of r: MessageReader) {
        for f in r.fields {
            record("name", r.name(f))
            record("value", r.value(f))
            record("kind", Int(f.kind.rawValue))
            record("nominated", r.isNominatedByConnection(f))
        }
    }
}

// MARK: - Reading past the valid bytes

// The reader's head buffer holds stale bytes beyond what it was given: a
// read of them is a bug AddressSanitizer cannot see by itself, so the
// harness poisons them while the reader works and while its results are
// read. Only in the fuzzing build, which links the ASan runtime.
#if COATCHECK_FUZZ
@_silgen_name("__asan_poison_memory_region")
private func asanPoison(_ address: UnsafeRawPointer, _ size: Int)
@_silgen_name("__asan_unpoison_memory_region")
private func asanUnpoison(_ address: UnsafeRawPointer, _ size: Int)
#endif

/// The part of a reader's head buffer marked unreadable: `from` to the
/// end. Moving the mark costs only the bytes it moves over.
struct HeadPoison {
    let reader: MessageReader
    private var from: Int

    init(_ reader: MessageReader) {
        self.reader = reader
        from = reader.capacity
    }

    /// Marks `bytes[from..<capacity]` unreadable, everything before readable.
    mutating func set(from new: Int) {
        #if COATCHECK_FUZZ
        if new < from {
            asanPoison(reader.bytes + new, from - new)
        } else if new > from {
            asanUnpoison(reader.bytes + from, new - from)
        }
        #endif
        from = new
    }

    mutating func clear() { set(from: reader.capacity) }
}

// MARK: - Reference rules (written from the RFCs, not from the product)

/// RFC 9110 §5.6.2 tchar.
func isTokenChar(_ c: UInt8) -> Bool { CharacterClass.token[Int(c)] }

/// RFC 3986 §3.2.2 host (reg-name, IPv4, IP-literal) and an optional port,
/// by its characters: unreserved, sub-delims, `%`, `:`, `[`, `]`.
func isAuthority(_ s: [UInt8]) -> Bool { !s.isEmpty && s.allSatisfy { CharacterClass.authority[Int($0)] } }

/// Byte tables, made once (the checks run on every byte of every input).
enum CharacterClass {
    static let token = table(extra: "!#$%&'*+-.^_`|~")
    static let authority = table(extra: "-._~!$&'()*+,;=%:[]")

    private static func table(extra: String) -> [Bool] {
        (0..<256).map { i in
            let c = UInt8(i)
            return (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || extra.utf8.contains(c)
        }
    }
}

/// Lower-case field names and tokens the checks look for.
enum Name {
    static let host = Array("host".utf8)
    static let contentLength = Array("content-length".utf8)
    static let transferEncoding = Array("transfer-encoding".utf8)
    static let connection = Array("connection".utf8)
    static let expect = Array("expect".utf8)
    static let callbackURL = Array("x-callback-url".utf8)
    static let prefer = Array("prefer".utf8)
    static let chunked = Array("chunked".utf8)
    static let close = Array("close".utf8)
    static let keepAlive = Array("keep-alive".utf8)
    static let continue100 = Array("100-continue".utf8)
}

func lowercased(_ bytes: some Sequence<UInt8>) -> [UInt8] {
    bytes.map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }
}

func text(_ bytes: some Sequence<UInt8>) -> String {
    String(decoding: Array(bytes), as: UTF8.self).debugDescription
}

/// The checks every field of an accepted head passes: a name of tchar, a
/// value without controls (HT aside) and without surrounding whitespace,
/// and ranges inside the head. Returns the fields as bytes.
func checkedFields(of r: MessageReader) -> [FieldCopy] {
    var copies: [FieldCopy] = []
    for (index, f) in r.fields.enumerated() {
        require(0 <= f.nameStart && f.nameStart < f.nameEnd && Int(f.nameEnd) <= r.headLength, "field \(index): name range")
        require(0 <= f.valueStart && f.valueStart <= f.valueEnd && Int(f.valueEnd) <= r.headLength, "field \(index): value range")
        let name = Array(r.name(f)), value = Array(r.value(f))
        require(name.allSatisfy(isTokenChar), "field name \(text(name)) is not a token")
        require(value.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }, "field value \(text(value)) has a control byte")
        require(value.first != 0x20 && value.first != 0x09 && value.last != 0x20 && value.last != 0x09,
                "field value \(text(value)) is not trimmed")
        let lower = lowercased(name)
        let expected: HeaderKind? =
            switch lower {
            case Name.host: .host
            case Name.contentLength: .contentLength
            case Name.transferEncoding: .transferEncoding
            case Name.connection: .connection
            case Name.expect: .expect
            case Name.callbackURL: .callbackURL
            default: nil
            }
        if let expected { require(f.kind == expected, "field \(text(name)) classified as \(f.kind)") }
        copies.append(FieldCopy(name: name, lower: lower, value: value, kind: f.kind.rawValue, nominated: r.isNominatedByConnection(f)))
    }
    return copies
}

struct FieldCopy: Equatable {
    var name: [UInt8]
    /// `name`, lower-cased.
    var lower: [UInt8]
    var value: [UInt8]
    var kind: UInt8
    var nominated: Bool
}

/// The framing fields of an accepted head obey RFC 9112 §6 as strictly as
/// the reader promises: at most one Content-Length, of digits; at most one
/// Transfer-Encoding, exactly `chunked`, never with Content-Length or in
/// HTTP/1.0.
func checkFraming(_ fields: [FieldCopy], versionMinor: Int) -> (contentLength: Int64?, chunked: Bool) {
    let lengths = fields.filter { $0.lower == Name.contentLength }
    let encodings = fields.filter { $0.lower == Name.transferEncoding }
    require(lengths.count <= 1 && encodings.count <= 1, "repeated framing fields accepted")
    require(lengths.isEmpty || encodings.isEmpty, "Content-Length with Transfer-Encoding accepted")
    var length: Int64?
    if let l = lengths.first {
        require(!l.value.isEmpty && l.value.count <= 18 && l.value.allSatisfy { $0 >= 0x30 && $0 <= 0x39 },
                "Content-Length \(text(l.value)) accepted")
        length = Int64(String(decoding: l.value, as: UTF8.self))
    }
    if let e = encodings.first {
        require(lowercased(e.value) == Name.chunked, "Transfer-Encoding \(text(e.value)) accepted")
        require(versionMinor == 1, "Transfer-Encoding in HTTP/1.0 accepted")
    }
    return (length, !encodings.isEmpty)
}
