import Foundation
import Testing

// Helpers for the engine tests (issue "The engine"): polling for a condition
// that has no callback, exact header views, SPEC §6 JSON error checks, and
// scratch files for process-level tests.

/// Polls `condition` every 5 ms until it holds or `timeout` seconds pass.
/// For states with no readiness callback (a counter in another thread).
@discardableResult
func waitUntil(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if condition() { return true }
        if Date() >= deadline { return false }
        Thread.sleep(forTimeInterval: 0.005)
    }
}

/// Seconds elapsed since `start` on the monotonic clock.
func secondsSince(_ start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// A port on 127.0.0.1 with nothing listening: connecting to it is refused.
func closedPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { throw TestError("bind failed: errno \(errno)") }
    var bound = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return Int(UInt16(bigEndian: bound.sin_port))
}

/// True if a TCP connect to 127.0.0.1:`port` is refused.
func connectionRefused(_ port: Int) -> Bool {
    do {
        _ = try RawClient(port: port, timeout: 1)
        return false
    } catch {
        return true
    }
}

/// A message head exactly as it was sent: the start line and every field
/// line in order, the name byte for byte, the value without the optional
/// whitespace around it (RFC 9110 §5.5) but otherwise untouched.
struct RawHead {
    var startLine: String
    var fields: [(name: String, value: String)]
    /// Offset just past the empty line that ends the head.
    var end: Int

    func values(_ name: String) -> [String] {
        fields.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
    }
    func has(_ name: String) -> Bool { !values(name).isEmpty }
}

/// The first head in `bytes`, or nil if no whole head is there.
func rawHead(_ bytes: [UInt8]) -> RawHead? {
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

/// SPEC §6: an error the proxy makes itself is `{"error":{"code":"...","message":"..."}}`.
func expectJSONError(_ r: Response, status: Int? = nil, code: String? = nil,
                     sourceLocation: SourceLocation = #_sourceLocation) {
    if let status {
        #expect(r.status == status, "status", sourceLocation: sourceLocation)
    }
    #expect(r.header("content-type")?.lowercased().hasPrefix("application/json") == true,
            "Content-Type \(r.header("content-type") ?? "none")", sourceLocation: sourceLocation)
    #expect(r.text.hasPrefix("{\"error\":{\"code\":\""), "body \(r.text)", sourceLocation: sourceLocation)
    let object = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
    let error = object?["error"] as? [String: Any]
    let gotCode = error?["code"] as? String
    #expect(gotCode?.isEmpty == false, "error.code in \(r.text)", sourceLocation: sourceLocation)
    #expect(error?["message"] is String, "error.message in \(r.text)", sourceLocation: sourceLocation)
    if let code {
        #expect(gotCode == code, "error.code in \(r.text)", sourceLocation: sourceLocation)
    }
}

/// Writes `text` to a new file in the temporary directory; returns its path.
func writeTempFile(_ text: String, suffix: String = ".yaml") throws -> String {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("coatcheck-test-\(UUID().uuidString)\(suffix)").path
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// A request head that a RecordingUpstream has seen in full.
func upstreamSawHead(_ upstream: RecordingUpstream) -> Bool {
    find(upstream.received, Array("\r\n\r\n".utf8)) != nil
}

/// Strictly decodes a chunked body at the front of `bytes`. Returns the data
/// so far and whether the last chunk (and trailer section) arrived; nil if
/// the framing is malformed.
func decodeChunked(_ bytes: ArraySlice<UInt8>) -> (body: [UInt8], complete: Bool)? {
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
func hasCompleteChunkedBody(_ bytes: [UInt8]) -> Bool {
    guard let head = rawHead(bytes) else { return false }
    return decodeChunked(bytes[head.end...])?.complete == true
}

/// Replies once a whole request (head, and a Content-Length or strictly
/// decoded chunked body) is in.
func whenRequestStrictlyComplete(_ response: String) -> @Sendable ([UInt8]) -> [UInt8]? {
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

/// An upstream answer that never comes: records and keeps reading.
let neverReply: @Sendable ([UInt8]) -> [UInt8]? = { _ in nil }

let okReply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
