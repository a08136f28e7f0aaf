import CLibevent
public import Loop

#if canImport(Glibc)
import Glibc
#endif

/// Why an upstream exchange could not produce a whole response.
public enum ClientFailure: Error, Sendable, Equatable {
    /// Connection refused or the address unreachable.
    case unreachable
    case connectTimeout
    /// The TLS handshake or the peer's certificate failed; says why
    /// (`tls: certificate verify failed: ...`).
    case tlsFailed(String)
    /// Closed or reset before any response byte.
    case reset
    /// A head that does not parse or breaks the strict rules.
    case badResponse
    /// Closed in the middle of the head or body.
    case truncated
}

/// Receives one exchange's response; all calls on the connection's loop.
public protocol HTTPClientDelegate: AnyObject {
    func clientConnected(_ connection: HTTPClientConnection)
    func clientResponseHead(_ connection: HTTPClientConnection, response: MessageReader)
    /// Decoded body bytes are in `buffer`: take all of them.
    func clientResponseBody(_ connection: HTTPClientConnection, buffer: EventBuffer)
    func clientResponseEnd(_ connection: HTTPClientConnection)
    /// The connection is closed and unusable; no more calls follow.
    func clientFailed(_ connection: HTTPClientConnection, failure: ClientFailure)
    /// The request output fell below the low-water mark after congestion.
    func clientOutputDrained(_ connection: HTTPClientConnection)
}

/// One connection to an upstream: connect, send a request, read its
/// response, then idle in a pool for the next one.
///
/// States: `connecting` -> `active` (a request is written, its response is
/// read) -> `idle` (in a pool, watched for the peer closing) -> `active`...
/// and `closed` from anywhere.
public final class HTTPClientConnection: ChannelDelegate {
    public enum State { case connecting, active, idle, closed }

    public let loop: EventLoop
    public let reader: MessageReader
    public private(set) var state = State.connecting
    /// Strong for the same reason as `Channel.delegate`; cleared whenever
    /// the exchange lets go (idle, close, failure).
    public var delegate: (any HTTPClientDelegate)?
    /// Called when an idle connection closes, so its pool can forget it.
    public var onIdleClose: ((HTTPClientConnection) -> Void)?
    /// Exchanges completed on this connection (0 while the first runs).
    public private(set) var completedExchanges = 0
    /// Any byte of the current response arrived.
    public private(set) var receivedResponseBytes = false

    private var channel: Channel?
    /// `channel` again, borrowed for the calls on the request path: it is
    /// set once, in `connect`, and the strong one keeps it to the end, so
    /// those calls need not retain and release it.
    private var borrowedChannel: Unmanaged<Channel>?
    private var headDone = false
    private var readPaused = false
    private var wantsDrainCallback = false
    private let scratch = EventBuffer()
    private let rawScratch: OpaquePointer
    private var connectTimer: Timer!
    private var retained: Unmanaged<HTTPClientConnection>?

    public static let outputHighWater = 256 * 1024

    public init(loop: EventLoop, maxHeaderBytes: Int) {
        self.loop = loop
        self.reader = MessageReader(kind: .response, capacity: maxHeaderBytes)
        self.rawScratch = scratch.raw
        self.connectTimer = Timer(loop: loop) { [unowned self] in self.connectTimedOut() }
    }

    /// Starts connecting, then the TLS handshake with `serverName` if `tls`
    /// is given (the connect timeout covers both); `delegate.clientConnected`
    /// or `clientFailed` follows.
    public func connect(to address: ResolvedAddress, timeout: Duration, tls: TLSClientContext? = nil, serverName: String = "") {
        guard let channel = Channel.connect(loop: loop, to: address, tls: tls, serverName: serverName) else {
            fail(.unreachable)
            return
        }
        self.channel = channel
        borrowedChannel = Unmanaged.passUnretained(channel)
        retained = Unmanaged.passRetained(self)
        channel.delegate = self
        channel.outputLowWater = 64 * 1024
        channel.inputHighWater = 512 * 1024
        connectTimer.schedule(after: timeout)
    }

    /// Where the request goes; valid while not closed.
    /// Calls `body` with the channel (borrowed), or returns `none` before `connect`.
    @inline(__always)
    private func withChannel<R>(else none: R, _ body: (Channel) -> R) -> R {
        guard let c = borrowedChannel else { return none }
        return c._withUnsafeGuaranteedRef(body)
    }

    public var output: EventBuffer? { channel.flatMap { $0.isClosed ? nil : $0.output } }

    /// Queues a request head and the body bytes that are in so far
    /// (`body` is emptied, `head` is not: a retry on a new connection sends
    /// it again), ending a chunked body if `lastChunk`; then writes. False
    /// if the connection is closed.
    public func sendRequest(head: ByteWriter, body: EventBuffer?, lastChunk: Bool) -> Bool {
        withChannel(else: false) { channel in
            guard !channel.isClosed else { return false }
            if !lastChunk && (body?.isEmpty ?? true) {
                // The head alone (a bodyless request): written from the writer.
                // The head is kept: a stale pooled connection sends it again.
                channel.write(head.bytes)
                return true
            }
            let out = channel.rawOutput
            head.copy(to: out)
            if let body, !body.isEmpty { evbuffer_add_buffer(out, body.raw) }
            if lastChunk { evbuffer_add(out, "0\r\n\r\n", 5) }
            channel.flush()
            return true
        }
    }

    /// Queues more request body (all of `buffer`), as a chunk if `chunked`,
    /// or the end of a chunked body (`buffer` nil); written at the end of
    /// this loop turn. False if the connection is closed.
    @discardableResult
    public func sendBody(_ buffer: EventBuffer?, chunked: Bool) -> Bool {
        guard let channel, !channel.isClosed else { return false }
        let out = channel.rawOutput
        if let buffer {
            let n = evbuffer_get_length(buffer.raw)
            if chunked { CLibevent_evbuffer_add_chunk_header(out, n) }
            evbuffer_add_buffer(out, buffer.raw)
            if chunked { evbuffer_add(out, "\r\n", 2) }
        } else {
            evbuffer_add(out, "0\r\n\r\n", 5)
        }
        channel.flushSoon()
        return true
    }

    /// Nothing of a request is left unsent.
    public var outputIsEmpty: Bool {
        withChannel(else: false) { !$0.isClosed && evbuffer_get_length($0.rawOutput) == 0 }
    }

    /// Writes the buffered request now (once connected), else on connect.
    public func writeNow() {
        channel?.flush()
    }

    /// Writes the buffered request at the end of this loop turn.
    public func flushSoon() {
        channel?.flushSoon()
    }

    /// The current response's body, if it has one, is all in the input
    /// already: reading on ends the response in this same callback.
    public var holdsWholeResponse: Bool {
        if reader.isMessageComplete { return true }
        guard case .length = reader.framing else { return false }
        return withChannel(else: false) { Int64(evbuffer_get_length($0.rawInput)) >= reader.remaining }
    }

    public var isOutputCongested: Bool {
        guard let channel, !channel.isClosed else { return false }
        let congested = evbuffer_get_length(channel.rawOutput) > HTTPClientConnection.outputHighWater
        if congested {
            wantsDrainCallback = true
            channel.wantsWritable = true
        }
        return congested
    }

    /// Prepares to read the response of a request about to be written.
    public func beginExchange(delegate: consuming any HTTPClientDelegate, isHead: Bool) {
        self.delegate = delegate
        reader.reset()
        reader.requestWasHead = isHead
        headDone = false
        receivedResponseBytes = false
        readPaused = false
        if state == .idle { state = .active }
        if state == .active { withChannel(else: ()) { $0.startReading() } }
    }

    /// Back to the pool: the previous response was whole and keep-alive.
    public func becomeIdle() {
        withChannel(else: ()) { channel in
            guard state == .active, !channel.isClosed else { return }
            state = .idle
            delegate = nil
            completedExchanges += 1
            channel.startReading()
        }
    }

    public func pauseReading() {
        readPaused = true
        channel?.stopReading()
    }

    public func resumeReading() {
        guard readPaused, let channel, !channel.isClosed else { return }
        readPaused = false
        channel.startReading()
        readable()
    }

    /// Closes without telling the delegate (the exchange gave up on it).
    public func close() {
        guard let channel, !channel.isClosed else { return }
        channel.close()
        connectTimer.cancel()
        let wasIdle = state == .idle
        state = .closed
        delegate = nil
        if wasIdle { onIdleClose?(self) }
        onIdleClose = nil
        retained?.release()
        retained = nil
    }

    // MARK: Callbacks

    public func channelReadable(_ channel: Channel) {
        readable()
        channel.inputConsumed()
    }

    private func readable() {
        withChannel(else: ()) { readable(on: $0) }
    }

    private func readable(on channel: Channel) {
        guard !channel.isClosed else { return }
        let input = channel.rawInput
        if state == .idle {
            // An idle upstream has nothing to say; bytes here mean it is broken.
            if evbuffer_get_length(input) > 0 { close() }
            return
        }
        guard state == .active else { return }
        if evbuffer_get_length(input) > 0 { receivedResponseBytes = true }
        while !readPaused {
            if !headDone {
                let result: MessageReader.HeadResult
                do {
                    result = try reader.readHead(from: input)
                } catch {
                    fail(.badResponse)
                    return
                }
                guard result == .complete else { return }
                if reader.status < 200 {
                    // Interim responses are not relayed (the proxy sent no
                    // Expect and no Upgrade); 101 cannot be honoured.
                    if reader.status == 101 { fail(.badResponse); return }
                    let wasHead = reader.requestWasHead
                    reader.reset()
                    reader.requestWasHead = wasHead
                    continue
                }
                headDone = true
                delegate?.clientResponseHead(self, response: reader)
                if channel.isClosed || state != .active { return }
                continue
            }
            let done: Bool
            do {
                done = try reader.readBody(from: input, into: rawScratch)
            } catch {
                fail(.badResponse)
                return
            }
            if evbuffer_get_length(rawScratch) > 0 {
                delegate?.clientResponseBody(self, buffer: scratch)
                evbuffer_drain(rawScratch, evbuffer_get_length(rawScratch))
                if channel.isClosed || state != .active { return }
            }
            if done {
                finishResponse()
            }
            return
        }
    }

    private func finishResponse() {
        let d = delegate
        // Keep-alive only for a delimited response the upstream did not
        // close, with nothing after it: stray bytes (a body on a 204, a
        // second response) would be served to the next request.
        let leftover = withChannel(else: true) { evbuffer_get_length($0.rawInput) > 0 }
        if !reader.keepAlive || reader.framing == .untilClose || leftover {
            delegate = nil
            close()
        }
        d?.clientResponseEnd(self)
    }

    public func channelWritable(_ channel: Channel) {
        if wantsDrainCallback {
            wantsDrainCallback = false
            delegate?.clientOutputDrained(self)
        }
    }

    public func channelConnected(_ channel: Channel, error: Int32) {
        connectTimer.cancel()
        guard error == 0 else {
            fail(channel.tlsFailure.map { .tlsFailed($0) } ?? .unreachable)
            return
        }
        setNoDelay(channel.fd)
        state = .active
        channel.startReading()
        delegate?.clientConnected(self)
    }

    public func channelClosed(_ channel: Channel, error: Int32) {
        if state == .idle {
            close()
            return
        }
        if error == 0 && headDone && reader.framing == .untilClose {
            // A close-delimited body ends here: drain what is left first.
            readable()
            guard !channel.isClosed else { return }
            reader.finishAtClose()
            let d = delegate
            delegate = nil
            close()
            d?.clientResponseEnd(self)
            return
        }
        fail(receivedResponseBytes || headDone ? .truncated : .reset)
    }

    private func connectTimedOut() {
        if state == .connecting { fail(.connectTimeout) }
    }

    private func fail(_ failure: ClientFailure) {
        let d = delegate
        delegate = nil
        close()
        d?.clientFailed(self, failure: failure)
    }

    public var isOpen: Bool { withChannel(else: false) { !$0.isClosed } }
}
