import Foundation

/// The one fake upstream, on plain blocking sockets and a thread per
/// connection. It records every byte it is sent, answers with a script,
/// optionally holds each answer until the test releases it, and counts
/// connections and the ones the proxy closed. Everything it sees is
/// signalled: `waitForRequests`, `waitForConnections`, `waitForPeerCloses`
/// and `wait(timeout:until:)` return the moment their condition holds.
public final class FakeUpstream: Sendable {
    /// Gets the bytes of the current request so far; returns what to send
    /// once it has seen enough (nil: keep reading).
    public typealias Script = @Sendable ([UInt8]) -> [UInt8]?

    /// What a gated upstream answers by default.
    public static let doneReply = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone"

    public struct State: Sendable {
        /// Every byte received, over all connections, in arrival order.
        public internal(set) var received: [UInt8] = []
        public internal(set) var connections = 0
        /// The requests the script answered (held ones included), each as
        /// its bytes were when the script took it.
        public internal(set) var requests: [[UInt8]] = []
        /// When each reply went out (for a gated one: when it was released).
        public internal(set) var repliedAt: [ContinuousClock.Instant] = []
        /// Connections the proxy closed (EOF or reset seen).
        public internal(set) var closedByPeer = 0
        /// Those of them closed while a reply was held.
        public internal(set) var closedWhileWaiting = 0
        var permits = 0
        /// The wake pipes of connections holding a reply.
        var held: Set<Int32> = []
        var stopped = false
    }

    public let port: Int
    private let fd: Int32
    private let state = Box(State())

    /// `closeAfterReply`: close each connection once it is answered (else
    /// keep reading the next request on it). `gated`: each reply waits for
    /// a `release`. The default script answers `doneReply` to each whole
    /// request.
    public init(closeAfterReply: Bool = true, gated: Bool = false,
                reply: @escaping Script = whenRequestComplete(FakeUpstream.doneReply)) throws {
        let (listenFD, port) = try bindLoopback(listen: 256)
        self.fd = listenFD
        self.port = port
        let state = self.state
        Thread.detachNewThread {
            while true {
                let c = accept(listenFD, nil, nil)
                if c < 0 { return }
                state.withLock { $0.connections += 1 }
                Thread.detachNewThread {
                    Self.serve(c, state, reply, closeAfterReply: closeAfterReply, gated: gated)
                }
            }
        }
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
        // Let held connections go rather than sit out their deadline.
        state.withLock { s in
            s.stopped = true
            for w in s.held { Self.wake(w) }
        }
    }

    private static func serve(_ c: Int32, _ state: Box<State>, _ reply: Script, closeAfterReply: Bool, gated: Bool) {
        defer { close(c) }
        setTimeouts(c, 10)
        var got: [UInt8] = []
        // Bytes that arrived while a reply was held are the next request's
        // start: the script sees them before anything else is read.
        var unchecked = false
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if !unchecked {
                let n = recv(c, &chunk, chunk.count, 0)
                if n == 0 || (n < 0 && errno == ECONNRESET) {
                    state.withLock { $0.closedByPeer += 1 }
                    return
                }
                if n < 0 { return } // idle for 10 s
                got.append(contentsOf: chunk[0..<n])
                state.withLock { $0.received.append(contentsOf: chunk[0..<n]) }
            }
            unchecked = false
            guard let out = reply(got) else { continue }
            let request = got
            got = []
            state.withLock { $0.requests.append(request) }
            if gated {
                guard hold(c, state, next: &got) else { return }
            } else {
                state.withLock { $0.repliedAt.append(.now) }
            }
            guard (try? sendAll(c, out)) != nil, !closeAfterReply else { return }
            unchecked = !got.isEmpty
        }
    }

    /// Waits for a permit, recording what the proxy sends meanwhile (into
    /// `next`) and whether it closes the connection. True: reply now.
    private static func hold(_ c: Int32, _ state: Box<State>, next: inout [UInt8]) -> Bool {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { return false }
        let (wakeRead, wakeWrite) = (pipeFDs[0], pipeFDs[1])
        _ = fcntl(wakeWrite, F_SETFL, fcntl(wakeWrite, F_GETFL) | O_NONBLOCK)
        defer {
            state.withLock { _ = $0.held.remove(wakeWrite) }
            close(wakeRead)
            close(wakeWrite)
        }
        let deadline = ContinuousClock.now + .seconds(20)
        var chunk = [UInt8](repeating: 0, count: 65536)
        var fds = [pollfd(fd: c, events: Int16(POLLIN), revents: 0), pollfd(fd: wakeRead, events: Int16(POLLIN), revents: 0)]
        while true {
            // Take a permit, or register to be woken when one comes.
            let go = state.withLock { s -> Bool? in
                if s.stopped { return false }
                guard s.permits > 0 else {
                    s.held.insert(wakeWrite)
                    return nil
                }
                s.permits -= 1
                s.repliedAt.append(.now)
                return true
            }
            if let go { return go }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return false }
            fds[0].revents = 0
            fds[1].revents = 0
            let ms = Int32(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            if poll(&fds, 2, ms) < 0 && errno != EINTR { return false }
            if fds[0].revents != 0 {
                let n = recv(c, &chunk, chunk.count, Int32(MSG_DONTWAIT))
                if n == 0 || (n < 0 && errno == ECONNRESET) {
                    state.withLock {
                        $0.closedByPeer += 1
                        $0.closedWhileWaiting += 1
                    }
                    return false
                }
                if n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { return false }
                if n > 0 {
                    next.append(contentsOf: chunk[0..<n])
                    state.withLock { $0.received.append(contentsOf: chunk[0..<n]) }
                }
            }
            if fds[1].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                _ = read(wakeRead, &drain, drain.count)
            }
        }
    }

    private static func wake(_ fd: Int32) {
        var byte: UInt8 = 1
        _ = write(fd, &byte, 1)
    }

    /// Lets `n` held (or future) replies go out.
    public func release(_ n: Int = 1) {
        state.withLock { s in
            s.permits += n
            for w in s.held { Self.wake(w) }
        }
    }

    /// Answers everything from now on.
    public func releaseAll() { release(1_000_000) }

    public var snapshot: State { state.withLock { $0 } }
    public var received: [UInt8] { state.withLock { $0.received } }
    public var receivedText: String { String(decoding: received, as: UTF8.self) }
    public var connections: Int { state.withLock { $0.connections } }
    public var closedByPeer: Int { state.withLock { $0.closedByPeer } }
    public var closedWhileWaiting: Int { state.withLock { $0.closedWhileWaiting } }
    public var requests: [[UInt8]] { state.withLock { $0.requests } }
    public var requestCount: Int { state.withLock { $0.requests.count } }
    public var requestLines: [String] { requests.compactMap { rawHead($0)?.startLine } }
    public var repliedAt: [ContinuousClock.Instant] { state.withLock { $0.repliedAt } }

    /// Blocks until `condition` holds for what the upstream has seen, or
    /// `timeout` seconds pass; whether it held.
    public func wait(timeout: Double, until condition: (State) -> Bool) -> Bool {
        state.wait(timeout: timeout, until: condition)
    }

    /// Waits for the script to have taken `n` requests; true if it has
    /// exactly `n` then.
    public func waitForRequests(_ n: Int, timeout: Double = 5) -> Bool {
        waitForCount(n, timeout: timeout) { $0.requests.count }
    }

    /// Waits for `n` connections; true if there are exactly `n` then.
    public func waitForConnections(_ n: Int, timeout: Double = 5) -> Bool {
        waitForCount(n, timeout: timeout) { $0.connections }
    }

    /// Waits for the proxy to have closed `n` connections; true if exactly `n` then.
    public func waitForPeerCloses(_ n: Int, timeout: Double = 5) -> Bool {
        waitForCount(n, timeout: timeout) { $0.closedByPeer }
    }

    private func waitForCount(_ n: Int, timeout: Double, _ count: (State) -> Int) -> Bool {
        var seen = 0
        _ = wait(timeout: timeout) { s in
            seen = count(s)
            return seen >= n
        }
        return seen == n
    }

    /// Waits for the bytes received so far to satisfy `condition`.
    public func waitForReceived(timeout: Double, _ condition: ([UInt8]) -> Bool) -> Bool {
        wait(timeout: timeout) { condition($0.received) }
    }
}
