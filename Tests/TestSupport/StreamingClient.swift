import Foundation

/// A blocking client for bulk bodies: a fixed 1 MiB receive buffer, bodies
/// counted and discarded, never accumulated. One reader thread; a writer
/// thread may send on the same socket.
public final class StreamingClient: @unchecked Sendable {
    // The buffer and its cursors belong to the one reader thread; the
    // writer thread only uses `fd`.
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
        buf = .allocate(capacity: capacity)
        setTimeouts(fd, Double(timeout), send: true)
    }

    deinit {
        close(fd)
        buf.deallocate()
    }

    public func send(_ bytes: [UInt8]) throws { try sendAll(fd, bytes) }

    /// Writes a chunked body of `total` bytes of `pattern` on a thread;
    /// `wait` returns its error, if any.
    public func startChunkedWriter(total: Int64, chunkSize: Int) -> ThreadResult {
        let result = ThreadResult()
        let fd = self.fd
        Thread.detachNewThread {
            do {
                var left = total
                try StreamingClient.pattern.withUnsafeBytes { p in
                    while left > 0 {
                        let n = Int(min(left, Int64(chunkSize)))
                        try sendAll(fd, Array((String(n, radix: 16) + "\r\n").utf8))
                        try sendAll(fd, p.baseAddress!, n)
                        try sendAll(fd, Array("\r\n".utf8))
                        left -= Int64(n)
                    }
                }
                try sendAll(fd, Array("0\r\n\r\n".utf8))
                result.finish(nil)
            } catch {
                result.finish("\(error)")
            }
        }
        return result
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
        guard end < capacity else { throw TestError("a head or line longer than the buffer") }
        let n = recv(fd, buf + end, capacity - end, 0)
        if n > 0 { end += n; return }
        if n == 0 { throw TestError("connection closed after \(done) body bytes") }
        throw TestError("stalled: no byte within the receive timeout after \(done) body bytes (errno \(errno))")
    }

    private var unread: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: buf + start, count: end - start) }

    /// Reads the response head (with the one head parser).
    public func readHead(deadline: Double, start t0: ContinuousClock.Instant) throws -> RawHead {
        while true {
            let bytes = Array(unread)
            if let head = rawHead(bytes) {
                start += head.end
                return head
            }
            try fill(deadline: deadline, since: t0, done: 0)
        }
    }

    /// Counts body bytes, keeping the first 64 KiB as `sample`.
    private func take(_ chunk: UnsafeRawBufferPointer, _ done: inout Int64) {
        if sample.count < 65536 {
            sample.append(contentsOf: chunk.prefix(65536 - sample.count))
        }
        done += Int64(chunk.count)
    }

    /// Reads a Content-Length or chunked body (with the one chunked
    /// decoder); returns its decoded size.
    public func readBody(_ head: RawHead, deadline: Double, start t0: ContinuousClock.Instant) throws -> Int64 {
        var done: Int64 = 0
        if let cl = head.values("content-length").first.flatMap({ Int64($0) }) {
            while done < cl {
                if start == end { try fill(deadline: deadline, since: t0, done: done) }
                let k = Int(min(cl - done, Int64(end - start)))
                take(UnsafeRawBufferPointer(start: buf + start, count: k), &done)
                start += k
            }
            return done
        }
        guard head.values("transfer-encoding").first?.lowercased() == "chunked" else {
            throw TestError("no framing: \(head.fields)")
        }
        var decoder = ChunkedDecoder()
        while true {
            do {
                let used = try decoder.decode(unread) { take($0, &done) }
                start += used
            } catch {
                throw TestError("\(error) after \(done) body bytes")
            }
            if decoder.isComplete { return done }
            try fill(deadline: deadline, since: t0, done: done)
        }
    }
}
