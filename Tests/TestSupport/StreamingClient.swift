import Foundation

/// A blocking client for bulk bodies: a fixed 1 MiB receive buffer, bodies
/// counted and discarded, never accumulated. One reader thread; a writer
/// thread may send on the same socket.
public final class StreamingClient: @unchecked Sendable {
    public let fd: Int32
    private let capacity = 1 << 20
    private let buf: UnsafeMutablePointer<UInt8>
    private var start = 0
    private var end = 0
    /// The first decoded body bytes, to compare with what was sent.
    public private(set) var sample: [UInt8] = []
    public static let pattern: [UInt8] = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ ($0 >> 13)) }

    public init(port: Int, timeout: Int = 15) throws {
        fd = try connectLoopback(port: port)
        buf = .allocate(capacity: 1 << 20)
        setTimeouts(fd, Double(timeout), send: true)
    }

    deinit {
        close(fd)
        buf.deallocate()
    }

    public func send(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try Self.sendAll(fd, $0.baseAddress!, $0.count) }
    }

    public static func sendAll(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int) throws {
        var off = 0
        while off < n {
            let k = Glibc.send(fd, p + off, n - off, Int32(MSG_NOSIGNAL))
            if k <= 0 { throw TestError("send failed after \(off) of \(n) bytes: errno \(errno)") }
            off += k
        }
    }

    /// Writes a chunked body of `total` bytes on a thread; `wait` returns its error, if any.
    public func startChunkedWriter(total: Int64, chunkSize: Int) -> ThreadResult {
        let result = ThreadResult()
        let fd = self.fd
        Thread.detachNewThread {
            do {
                var left = total
                try StreamingClient.pattern.withUnsafeBytes { p in
                    while left > 0 {
                        let n = Int(min(left, Int64(chunkSize)))
                        try StreamingClient.sendAll(fd, Array((String(n, radix: 16) + "\r\n").utf8), p.baseAddress!, n)
                        left -= Int64(n)
                    }
                }
                let end = Array("0\r\n\r\n".utf8)
                try end.withUnsafeBytes { try StreamingClient.sendAll(fd, $0.baseAddress!, $0.count) }
                result.finish(nil)
            } catch {
                result.finish("\(error)")
            }
        }
        return result
    }

    private static func sendAll(_ fd: Int32, _ header: [UInt8], _ data: UnsafeRawPointer, _ n: Int) throws {
        try header.withUnsafeBytes { try sendAll(fd, $0.baseAddress!, $0.count) }
        try sendAll(fd, data, n)
        try sendAll(fd, "\r\n", 2)
    }

    /// Reads more bytes into the buffer (compacting it first).
    private func fill(deadline: Double, since t0: ContinuousClock.Instant, done: Int64) throws {
        if secondsSince(t0) > deadline {
            throw TestError("too slow: \(done) bytes in \(deadline)s (\(Double(done) / deadline / 1e6) MB/s)")
        }
        if start > 0 {
            memmove(buf, buf + start, end - start)
            end -= start
            start = 0
        }
        guard end < capacity else { throw TestError("a line longer than the buffer") }
        let n = recv(fd, buf + end, capacity - end, 0)
        if n > 0 { end += n; return }
        if n == 0 { throw TestError("connection closed after \(done) body bytes") }
        throw TestError("stalled: no byte within the receive timeout after \(done) body bytes (errno \(errno))")
    }

    private func readLine(deadline: Double, since t0: ContinuousClock.Instant, done: Int64) throws -> String {
        while true {
            if end - start >= 2, let p = memchr(buf + start, 0x0A, end - start) {
                let lf = buf.distance(to: p.assumingMemoryBound(to: UInt8.self))
                let line = String(decoding: UnsafeBufferPointer(start: buf + start, count: lf - start), as: UTF8.self)
                start = lf + 1
                return line.hasSuffix("\r") ? String(line.dropLast()) : line
            }
            try fill(deadline: deadline, since: t0, done: done)
        }
    }

    public func readHead(deadline: Double, start t0: ContinuousClock.Instant) throws -> RawHead {
        var lines: [String] = []
        while true {
            let line = try readLine(deadline: deadline, since: t0, done: 0)
            if line.isEmpty { break }
            lines.append(line)
        }
        let text = lines.joined(separator: "\r\n") + "\r\n\r\n"
        guard let head = rawHead(Array(text.utf8)) else { throw TestError("bad head: \(lines)") }
        return head
    }

    /// Consumes `n` body bytes, keeping the first few KiB as `sample`.
    private func discard(_ n: Int64, deadline: Double, since t0: ContinuousClock.Instant, done: inout Int64) throws {
        var left = n
        while left > 0 {
            if start == end { try fill(deadline: deadline, since: t0, done: done) }
            let k = Int(min(left, Int64(end - start)))
            if sample.count < 65536 {
                sample.append(contentsOf: UnsafeBufferPointer(start: buf + start, count: min(k, 65536 - sample.count)))
            }
            start += k
            left -= Int64(k)
            done += Int64(k)
        }
    }

    /// Reads a Content-Length or chunked body; returns its decoded size.
    public func readBody(_ head: RawHead, deadline: Double, start t0: ContinuousClock.Instant) throws -> Int64 {
        var done: Int64 = 0
        if let cl = head.values("content-length").first.flatMap({ Int64($0) }) {
            try discard(cl, deadline: deadline, since: t0, done: &done)
            return done
        }
        guard head.values("transfer-encoding").first?.lowercased() == "chunked" else {
            throw TestError("no framing: \(head.fields)")
        }
        while true {
            let sizeLine = try readLine(deadline: deadline, since: t0, done: done)
            guard let size = Int64(sizeLine.split(separator: ";").first ?? "", radix: 16) else {
                throw TestError("bad chunk size line \(sizeLine) after \(done) bytes")
            }
            if size == 0 {
                while try !readLine(deadline: deadline, since: t0, done: done).isEmpty {}
                return done
            }
            try discard(size, deadline: deadline, since: t0, done: &done)
            guard try readLine(deadline: deadline, since: t0, done: done).isEmpty else {
                throw TestError("chunk not followed by CRLF after \(done) bytes")
            }
        }
    }
}
