#if canImport(Glibc)
import Glibc
#endif

/// A blocking TCP client with a receive timeout, for exact bytes in and out.
public final class RawClient {
    public let fd: Int32
    /// Bytes received and not yet taken by `readResponse`.
    public var buffer: [UInt8] = []
    /// The server closed (EOF or reset).
    public private(set) var closed = false

    public init(port: Int, timeout: Double = 10) throws {
        fd = try connectLoopback(port: port)
        setTimeout(timeout)
    }

    deinit { close(fd) }

    public func setTimeout(_ seconds: Double) { setTimeouts(fd, seconds) }

    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    public func send(_ bytes: [UInt8]) throws { try sendAll(fd, bytes) }

    /// Reads more bytes; false on EOF, throws on timeout.
    @discardableResult
    public func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &chunk, chunk.count, 0)
        if n > 0 { buffer.append(contentsOf: chunk[0..<n]); return true }
        if n == 0 { closed = true; return false }
        if errno == ECONNRESET { closed = true; return false }
        throw TestError("recv timed out or failed: errno \(errno)")
    }

    /// Reads one whole response (Content-Length, chunked or until close).
    public func readResponse(head: Bool = false) throws -> Response {
        while true {
            if let (r, used) = try parseResponse(buffer, requestWasHead: head, atEOF: closed) {
                buffer.removeFirst(used)
                return r
            }
            if closed { throw TestError("connection closed before a whole response: \(buffer.count) bytes: \(String(decoding: buffer.prefix(200), as: UTF8.self))") }
            try fill()
        }
    }

    /// True if the server closes the connection (EOF or reset) within the timeout.
    public func waitForClose() -> Bool {
        while !closed {
            guard (try? fill()) != nil else { return false }
        }
        return true
    }
}

/// One request on a fresh connection.
public func request(_ port: Int, _ text: String, head: Bool = false) throws -> Response {
    let c = try RawClient(port: port)
    try c.send(text)
    return try c.readResponse(head: head)
}

public func get(_ port: Int, _ path: String, headers: String = "") throws -> Response {
    try request(port, "GET \(path) HTTP/1.1\r\nHost: test.local\r\n\(headers)Connection: close\r\n\r\n")
}

