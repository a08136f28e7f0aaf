import Foundation

// The tests' one reading of HTTP/1.1 messages: one head parser, one
// chunked decoder, one response parser built on the two. Strict where the
// proxy's output is checked, so a framing slip is a failure, not a guess.

/// A message head exactly as it was sent: the start line and every field
/// line in order, the name byte for byte, the value without the optional
/// whitespace around it (RFC 9110 §5.5) but otherwise untouched.
public struct RawHead: Sendable {
    public var startLine: String
    /// A line without a colon is kept whole as a name with an empty value
    /// (and counted in `linesWithoutColon`), so a test can see it.
    public var fields: [(name: String, value: String)]
    /// Offset just past the empty line that ends the head.
    public var end: Int
    public var linesWithoutColon: Int

    public func values(_ name: String) -> [String] {
        fields.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }
    public func has(_ name: String) -> Bool { !values(name).isEmpty }
}

/// The first head in `bytes`, or nil if no whole head is there.
public func rawHead(_ bytes: [UInt8]) -> RawHead? {
    guard let end = find(bytes, Array("\r\n\r\n".utf8)) else { return nil }
    let text = String(decoding: bytes[0..<end], as: UTF8.self)
    var lines = text.components(separatedBy: "\r\n")
    let start = lines.removeFirst()
    var fields: [(String, String)] = []
    var withoutColon = 0
    for line in lines {
        guard let colon = line.firstIndex(of: ":") else {
            fields.append((line, ""))
            withoutColon += 1
            continue
        }
        var value = Substring(line[line.index(after: colon)...])
        while let f = value.first, f == " " || f == "\t" { value.removeFirst() }
        while let l = value.last, l == " " || l == "\t" { value.removeLast() }
        fields.append((String(line[..<colon]), String(value)))
    }
    return RawHead(startLine: start, fields: fields, end: end + 4, linesWithoutColon: withoutColon)
}

/// The offset of the first `needle` in `haystack`.
public func find(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
    guard !needle.isEmpty, haystack.count >= needle.count else { return nil }
    return haystack.withUnsafeBufferPointer { h in
        needle.withUnsafeBufferPointer { n in
            var i = 0
            while i <= h.count - n.count {
                if h[i] == n[0] {
                    var k = 1
                    while k < n.count && h[i + k] == n[k] { k += 1 }
                    if k == n.count { return i }
                }
                i += 1
            }
            return nil
        }
    }
}

/// The one chunked-body decoder (RFC 9112 §7.1), incremental and strict: a
/// chunk size is hex digits only (an extension after `;` is skipped), every
/// line ends in CRLF, chunk data is followed by CRLF, trailer fields are
/// skipped. Fed the bytes in any pieces, it hands on the body as it goes:
/// a 1 GiB body streams through it as well as a short one parses.
public struct ChunkedDecoder: Sendable {
    private enum State: Sendable {
        case size
        case data(left: Int)
        case dataEnd
        case trailer
        case done
    }

    private var state = State.size

    public init() {}

    /// The last chunk and the trailer section have been read.
    public var isComplete: Bool {
        if case .done = state { return true }
        return false
    }

    /// Decodes what it can from the front of `bytes`, handing each run of
    /// body bytes to `body`, and returns how many bytes it used: it stops
    /// before a line that has not fully arrived (call again with those
    /// bytes and more) and after the trailer section. Throws on bad framing.
    public mutating func decode(_ bytes: UnsafeRawBufferPointer, body: (UnsafeRawBufferPointer) throws -> Void) throws -> Int {
        var i = 0
        let n = bytes.count
        // The offset of the CR of the first CRLF at or after `from`.
        func lineEnd(from: Int) -> Int? {
            var j = from
            while j + 1 < n {
                if bytes[j] == 0x0D && bytes[j + 1] == 0x0A { return j }
                j += 1
            }
            return nil
        }
        while true {
            switch state {
            case .done:
                return i
            case .size:
                guard let e = lineEnd(from: i) else { return i }
                let line = bytes[i..<e]
                let digits = line.prefix { $0 != UInt8(ascii: ";") }
                guard !digits.isEmpty, digits.allSatisfy(isHexDigit),
                      let size = Int(String(decoding: digits, as: UTF8.self), radix: 16)
                else { throw TestError("bad chunk size line \"\(String(decoding: line, as: UTF8.self))\"") }
                i = e + 2
                state = size == 0 ? .trailer : .data(left: size)
            case .data(let left):
                guard i < n else { return i }
                let k = min(left, n - i)
                try body(UnsafeRawBufferPointer(rebasing: bytes[i..<i + k]))
                i += k
                state = k == left ? .dataEnd : .data(left: left - k)
            case .dataEnd:
                guard n - i >= 2 else { return i }
                guard bytes[i] == 0x0D && bytes[i + 1] == 0x0A else { throw TestError("chunk data not followed by CRLF") }
                i += 2
                state = .size
            case .trailer:
                guard let e = lineEnd(from: i) else { return i }
                let empty = e == i
                i = e + 2
                if empty { state = .done }
            }
        }
    }
}

private func isHexDigit(_ b: UInt8) -> Bool {
    (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66)
}

/// Decodes a chunked body at the front of `bytes`: the data so far and
/// whether the last chunk (and trailer section) arrived; nil if the framing
/// is malformed.
public func decodeChunked(_ bytes: ArraySlice<UInt8>) -> (body: [UInt8], complete: Bool)? {
    var decoder = ChunkedDecoder()
    var body: [UInt8] = []
    do {
        _ = try bytes.withUnsafeBytes { try decoder.decode($0) { body.append(contentsOf: $0) } }
    } catch {
        return nil
    }
    return (body, decoder.isComplete)
}

/// Whether `bytes` holds a whole request: a head, and all of its
/// Content-Length or (strictly decoded) chunked body.
public func isWholeRequest(_ bytes: [UInt8]) -> Bool {
    guard let head = rawHead(bytes) else { return false }
    if let cl = head.values("content-length").first.flatMap({ Int($0) }) {
        return bytes.count >= head.end + cl
    }
    if head.values("transfer-encoding").first?.lowercased() == "chunked" {
        return decodeChunked(bytes[head.end...])?.complete == true
    }
    return true
}

/// True if `bytes` is a request with a whole chunked body, i.e. one an
/// upstream would take for complete.
public func hasCompleteChunkedBody(_ bytes: [UInt8]) -> Bool {
    guard let head = rawHead(bytes) else { return false }
    return decodeChunked(bytes[head.end...])?.complete == true
}

/// A fake upstream's script: answers `response` once a whole request is in.
public func whenRequestComplete(_ response: String) -> @Sendable ([UInt8]) -> [UInt8]? {
    let bytes = Array(response.utf8)
    return { got in isWholeRequest(got) ? bytes : nil }
}

/// A parsed HTTP response as a test sees it.
public struct Response: Sendable {
    /// The status line exactly as sent.
    public var startLine: String
    public var status: Int
    public var reason: String
    /// Every field in order: the name byte for byte, the value as `RawHead` gives it.
    public var headers: [(String, String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
    public func headers(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }
    public var text: String { String(decoding: body, as: UTF8.self) }
}

/// Parses one response from the front of `bytes` (a 100 Continue before it
/// is skipped): the response and the bytes it took; nil if it is incomplete.
/// `atEOF`: the connection has closed, so a body without framing ends here.
public func parseResponse(_ bytes: [UInt8], requestWasHead: Bool = false, atEOF: Bool = false) throws -> (Response, Int)? {
    guard let head = rawHead(bytes) else { return nil }
    guard head.linesWithoutColon == 0 else {
        throw TestError("bad header line in \(head.fields.map { $0.value.isEmpty ? $0.name : "\($0.name): \($0.value)" })")
    }
    let parts = head.startLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count >= 2, let status = Int(parts[1]) else { throw TestError("bad status line \(head.startLine)") }
    var r = Response(startLine: head.startLine, status: status, reason: parts.count > 2 ? String(parts[2]) : "",
                     headers: head.fields.map { ($0.name, $0.value) }, body: [])
    let offset = head.end
    if status == 100 {
        return try parseResponse(Array(bytes[offset...]), requestWasHead: requestWasHead, atEOF: atEOF).map { ($0.0, $0.1 + offset) }
    }
    if requestWasHead || status == 204 || status == 304 || status < 200 { return (r, offset) }
    if r.header("transfer-encoding")?.lowercased() == "chunked" {
        var decoder = ChunkedDecoder()
        var body: [UInt8] = []
        let used = try bytes[offset...].withUnsafeBytes { try decoder.decode($0) { body.append(contentsOf: $0) } }
        guard decoder.isComplete else { return nil }
        r.body = body
        return (r, offset + used)
    }
    if let cl = r.header("content-length").flatMap({ Int($0) }) {
        guard bytes.count >= offset + cl else { return nil }
        r.body = Array(bytes[offset..<offset + cl])
        return (r, offset + cl)
    }
    guard atEOF else { return nil }
    r.body = Array(bytes[offset...])
    return (r, bytes.count)
}
