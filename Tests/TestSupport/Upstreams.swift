import Foundation

/// A scripted upstream on plain blocking sockets: records every byte it is
/// sent and answers each connection with `reply(requestBytes)`.
public final class RecordingUpstream: @unchecked Sendable {
    public let fd: Int32
    public let port: Int
    private let state = Box<(received: [UInt8], connections: Int)>(([], 0))
    /// Connections the proxy closed (EOF or reset seen while reading).
    private let peerCloses = Box<Int>(0)
    public let reply: @Sendable ([UInt8]) -> [UInt8]?
    public let closeAfterReply: Bool
    private let thread: Thread?

    /// `reply` gets the bytes so far and returns what to send once it has
    /// seen enough (nil: keep reading).
    public init(closeAfterReply: Bool = true, reply: @escaping @Sendable ([UInt8]) -> [UInt8]?) throws {
        self.reply = reply
        self.closeAfterReply = closeAfterReply
        let (fd, port) = try bindLoopback(listen: 64)
        self.fd = fd
        self.port = port
        let listenFD = fd
        let st = state
        let closeAfter = closeAfterReply
        let reply = self.reply
        let closes = peerCloses
        thread = Thread {
            while true {
                let c = accept(listenFD, nil, nil)
                if c < 0 { return }
                st.withLock { $0.connections += 1 }
                Thread.detachNewThread {
                    var got: [UInt8] = []
                    var chunk = [UInt8](repeating: 0, count: 65536)
                    var tv = timeval(tv_sec: 10, tv_usec: 0)
                    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                    while true {
                        let n = recv(c, &chunk, chunk.count, 0)
                        if n == 0 || (n < 0 && errno == ECONNRESET) { closes.withLock { $0 += 1 } }
                        if n <= 0 { break }
                        got.append(contentsOf: chunk[0..<n])
                        st.withLock { $0.received.append(contentsOf: chunk[0..<n]) }
                        if let out = reply(got) {
                            _ = out.withUnsafeBytes { Glibc.send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                            got.removeAll()
                            if closeAfter { break }
                        }
                    }
                    close(c)
                }
            }
        }
        thread?.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    public var received: [UInt8] { state.withLock { $0.received } }
    public var receivedText: String { String(decoding: received, as: UTF8.self) }
    public var connections: Int { state.withLock { $0.connections } }
    /// How many of its connections the proxy has closed so far.
    public var closedByPeer: Int { peerCloses.withLock { $0 } }
}

/// An upstream that takes each request whole, then holds its answer until
/// the test releases it (`release`), so a job stays `running` exactly as
/// long as the test wants. It records each request, the moment each reply
/// went out, and connections the proxy closed while waiting.
public final class GatedUpstream: @unchecked Sendable {
    struct State {
        var requests: [[UInt8]] = []
        var permits = 0
        var repliedAt: [ContinuousClock.Instant] = []
        var closedWhileWaiting = 0
    }

    public let fd: Int32
    public let port: Int
    private let state = Box(State())
    private let reply: [UInt8]

    public init(reply: String = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone") throws {
        self.reply = Array(reply.utf8)
        let (fd, port) = try bindLoopback(listen: 256)
        self.fd = fd
        self.port = port
        let st = state
        let out = self.reply
        Thread.detachNewThread {
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 { return }
                Thread.detachNewThread { GatedUpstream.serve(c, st, out) }
            }
        }
    }

    private static func serve(_ c: Int32, _ st: Box<State>, _ out: [UInt8]) {
        defer { close(c) }
        var got: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        let deadline = ContinuousClock.now + .seconds(20)
        var pfd = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
        // The request, whole.
        while !isWholeRequest(got) {
            guard ContinuousClock.now < deadline else { return }
            pfd.revents = 0
            if poll(&pfd, 1, 10) <= 0 { continue }
            let n = recv(c, &chunk, chunk.count, 0)
            if n <= 0 { return }
            got.append(contentsOf: chunk[0..<n])
        }
        st.withLock { $0.requests.append(got) }
        // Wait for a permit, watching for the proxy closing the connection.
        while ContinuousClock.now < deadline {
            let go = st.withLock { s -> Bool in
                guard s.permits > 0 else { return false }
                s.permits -= 1
                s.repliedAt.append(.now)
                return true
            }
            if go {
                _ = out.withUnsafeBytes { Glibc.send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                return
            }
            pfd.revents = 0
            if poll(&pfd, 1, 1) > 0 {
                let n = recv(c, &chunk, chunk.count, Int32(MSG_DONTWAIT))
                if n == 0 || (n < 0 && errno == ECONNRESET) {
                    st.withLock { $0.closedWhileWaiting += 1 }
                    return
                }
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    /// Lets `n` held (or future) requests be answered.
    public func release(_ n: Int = 1) { state.withLock { $0.permits += n } }
    /// Answers everything from now on.
    public func releaseAll() { release(1_000_000) }

    public var requestCount: Int { state.withLock { $0.requests.count } }
    public var requests: [[UInt8]] { state.withLock { $0.requests } }
    public var requestLines: [String] { requests.compactMap { rawHead($0)?.startLine } }
    public var repliedAt: [ContinuousClock.Instant] { state.withLock { $0.repliedAt } }
    public var closedWhileWaiting: Int { state.withLock { $0.closedWhileWaiting } }
}
