import Foundation

/// A parsed HTTP response as a test sees it.
public struct Response {
    public var status: Int
    public var reason: String
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

/// Parses one response from the front of `bytes`; nil if incomplete.
public func parseResponse(_ bytes: [UInt8], requestWasHead: Bool = false, atEOF: Bool = false) throws -> (Response, Int)? {
    guard let headEnd = find(bytes, Array("\r\n\r\n".utf8)) else { return nil }
    let headText = String(decoding: bytes[0..<headEnd], as: UTF8.self)
    var lines = headText.components(separatedBy: "\r\n")
    let statusLine = lines.removeFirst()
    let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count >= 2, let status = Int(parts[1]) else { throw TestError("bad status line \(statusLine)") }
    var r = Response(status: status, reason: parts.count > 2 ? String(parts[2]) : "", headers: [], body: [])
    for line in lines {
        guard let colon = line.firstIndex(of: ":") else { throw TestError("bad header line \(line)") }
        r.headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
    }
    var offset = headEnd + 4
    if status == 100 {
        return try parseResponse(Array(bytes[offset...]), requestWasHead: requestWasHead, atEOF: atEOF).map { ($0.0, $0.1 + offset) }
    }
    if requestWasHead || status == 204 || status == 304 || status < 200 { return (r, offset) }
    if r.header("transfer-encoding")?.lowercased() == "chunked" {
        while true {
            guard let lineEnd = find(Array(bytes[offset...]), Array("\r\n".utf8)) else { return nil }
            let sizeText = String(decoding: bytes[offset..<offset + lineEnd], as: UTF8.self)
            guard let size = Int(sizeText.split(separator: ";")[0], radix: 16) else { throw TestError("bad chunk size \(sizeText)") }
            offset += lineEnd + 2
            if size == 0 {
                guard bytes.count >= offset + 2 else { return nil }
                return (r, offset + 2)
            }
            guard bytes.count >= offset + size + 2 else { return nil }
            r.body.append(contentsOf: bytes[offset..<offset + size])
            offset += size + 2
        }
    }
    if let cl = r.header("content-length").flatMap(Int.init) {
        guard bytes.count >= offset + cl else { return nil }
        r.body = Array(bytes[offset..<offset + cl])
        return (r, offset + cl)
    }
    guard atEOF else { return nil }
    r.body = Array(bytes[offset...])
    return (r, bytes.count)
}

public func find(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
    guard haystack.count >= needle.count else { return nil }
    var i = 0
    while i <= haystack.count - needle.count {
        if haystack[i] == needle[0] && Array(haystack[i..<i + needle.count]) == needle { return i }
        i += 1
    }
    return nil
}

/// A message head exactly as it was sent: the start line and every field
/// line in order, the name byte for byte, the value without the optional
/// whitespace around it (RFC 9110 §5.5) but otherwise untouched.
public struct RawHead {
    public var startLine: String
    public var fields: [(name: String, value: String)]
    /// Offset just past the empty line that ends the head.
    public var end: Int

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
    for line in lines {
        guard let colon = line.firstIndex(of: ":") else { fields.append((line, "")); continue }
        var value = Substring(line[line.index(after: colon)...])
        while let f = value.first, f == " " || f == "\t" { value.removeFirst() }
        while let l = value.last, l == " " || l == "\t" { value.removeLast() }
        fields.append((String(line[..<colon]), String(value)))
    }
    return RawHead(startLine: start, fields: fields, end: end + 4)
}

/// Strictly decodes a chunked body at the front of `bytes`. Returns the data
/// so far and whether the last chunk (and trailer section) arrived; nil if
/// the framing is malformed.
public func decodeChunked(_ bytes: ArraySlice<UInt8>) -> (body: [UInt8], complete: Bool)? {
    var body: [UInt8] = []
    var i = bytes.startIndex
    func line() -> (String, Int)? {
        var j = i
        while j + 1 < bytes.endIndex {
            if bytes[j] == 0x0D && bytes[j + 1] == 0x0A { return (String(decoding: bytes[i..<j], as: UTF8.self), j + 2) }
            j += 1
        }
        return nil
    }
    while true {
        guard let (sizeLine, next) = line() else { return (body, false) }
        let sizeText = sizeLine.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard !sizeText.isEmpty, sizeText.allSatisfy(\.isHexDigit), let size = Int(sizeText, radix: 16) else { return nil }
        i = next
        if size == 0 {
            // Trailer section: field lines up to an empty line.
            while true {
                guard let (t, after) = line() else { return (body, false) }
                i = after
                if t.isEmpty { return (body, true) }
            }
        }
        guard bytes.endIndex - i >= size + 2 else {
            body.append(contentsOf: bytes[i..<min(bytes.endIndex, i + size)])
            return (body, false)
        }
        body.append(contentsOf: bytes[i..<i + size])
        guard bytes[i + size] == 0x0D && bytes[i + size + 1] == 0x0A else { return nil }
        i += size + 2
    }
}

/// True if the upstream was sent a whole chunked request body, i.e. it would
/// take what it got for a complete request.
public func hasCompleteChunkedBody(_ bytes: [UInt8]) -> Bool {
    guard let head = rawHead(bytes) else { return false }
    return decodeChunked(bytes[head.end...])?.complete == true
}

/// Replies once a whole request (head, and a Content-Length or strictly
/// decoded chunked body) is in.
public func whenRequestStrictlyComplete(_ response: String) -> @Sendable ([UInt8]) -> [UInt8]? {
    let bytes = Array(response.utf8)
    return { got in
        guard let head = rawHead(got) else { return nil }
        if let cl = head.values("content-length").first.flatMap({ Int($0) }) {
            return got.count >= head.end + cl ? bytes : nil
        }
        if head.values("transfer-encoding").first?.lowercased() == "chunked" {
            return decodeChunked(got[head.end...])?.complete == true ? bytes : nil
        }
        return bytes
    }
}

/// Replies once a whole request head (and its Content-Length body) is in.
public func whenRequestComplete(_ response: String) -> @Sendable ([UInt8]) -> [UInt8]? {
    let bytes = Array(response.utf8)
    return { got in
        guard let end = find(got, Array("\r\n\r\n".utf8)) else { return nil }
        let head = String(decoding: got[0..<end], as: UTF8.self).lowercased()
        if let line = head.components(separatedBy: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
           let n = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) {
            return got.count >= end + 4 + n ? bytes : nil
        }
        if head.contains("transfer-encoding: chunked") {
            return find(got, Array("0\r\n\r\n".utf8)) != nil ? bytes : nil
        }
        return bytes
    }
}

/// Reads one response whose framing is Content-Length (or none), keeping its
/// head exactly as sent.
public func readRawResponse(_ c: RawClient, head isHead: Bool = false) throws -> (RawHead, [UInt8]) {
    while rawHead(c.buffer) == nil {
        guard try c.fill() else { throw TestError("closed before a head") }
    }
    let head = rawHead(c.buffer)!
    let length = isHead ? 0 : (head.values("content-length").first.flatMap { Int($0) } ?? 0)
    while c.buffer.count < head.end + length {
        guard try c.fill() else { throw TestError("closed inside a body") }
    }
    let body = Array(c.buffer[head.end..<head.end + length])
    c.buffer.removeFirst(head.end + length)
    return (head, body)
}

/// Whether `bytes` holds a whole request (head, and a Content-Length or
/// chunked body).
public func isWholeRequest(_ bytes: [UInt8]) -> Bool {
    whenRequestStrictlyComplete("x")(bytes) != nil
}
