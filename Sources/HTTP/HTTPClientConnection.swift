import CLibevent
import Loop

#if canImport(Glibc)
import Glibc
#endif

/// Why an upstream exchange could not produce a whole response.
public enum ClientFailure: Error, Sendable, Equatable {
    /// Connection refused or the address unreachable.
    case unreachable
    case connectTimeout
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
    func clientResponseBody(_ connection: HTTPClientConnection, buffer: OpaquePointer)
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
public final class HTTPClientConnection {
    public enum State { case connecting, active, idle, closed }

    public let loop: EventLoop
    public let reader: MessageReader
    public private(set) var state = State.connecting
    public weak var delegate: (any HTTPClientDelegate)?
    /// Called when an idle connection closes, so its pool can forget it.
    public var onIdleClose: ((HTTPClientConnection) -> Void)?
    /// Exchanges completed on this connection (0 while the first runs).
    public private(set) var completedExchanges = 0
    /// Any byte of the current response arrived.
    public private(set) var receivedResponseBytes = false

    private var bev: OpaquePointer?
    private var headDone = false
    private var readPaused = false
    private var wantsDrainCallback = false
    private let scratch: OpaquePointer
    private var connectTimer: Timer!
    private var retained: Unmanaged<HTTPClientConnection>?

    public static let outputHighWater = 256 * 1024

    public init(loop: EventLoop, maxHeaderBytes: Int) {
        self.loop = loop
        self.reader = MessageReader(kind: .response, capacity: maxHeaderBytes)
        self.scratch = evbuffer_new()
        self.connectTimer = Timer(loop: loop) { [unowned self] in self.connectTimedOut() }
    }

    deinit {
        evbuffer_free(scratch)
    }

    /// Starts connecting; `delegate.clientConnected` or `clientFailed` follows.
    public func connect(to address: ResolvedAddress, timeout: Duration) {
        guard let bev = bufferevent_socket_new(loop.base, -1, Int32(BEV_OPT_CLOSE_ON_FREE.rawValue)) else {
            fail(.unreachable)
            return
        }
        self.bev = bev
        retained = Unmanaged.passRetained(self)
        let ctx = retained!.toOpaque()
        bufferevent_setcb(bev, { _, ctx in
            Unmanaged<HTTPClientConnection>.fromOpaque(ctx!).takeUnretainedValue().readable()
        }, { _, ctx in
            Unmanaged<HTTPClientConnection>.fromOpaque(ctx!).takeUnretainedValue().writable()
        }, { _, what, ctx in
            Unmanaged<HTTPClientConnection>.fromOpaque(ctx!).takeUnretainedValue().event(what)
        }, ctx)
        bufferevent_setwatermark(bev, Int16(EV_WRITE), 64 * 1024, 0)
        bufferevent_setwatermark(bev, Int16(EV_READ), 0, 512 * 1024)
        bufferevent_set_max_single_read(bev, 64 * 1024)
        bufferevent_enable(bev, Int16(EV_READ | EV_WRITE))
        var address = address
        let rc = address.withSockaddr { addr, len in
            bufferevent_socket_connect(bev, UnsafeMutablePointer(mutating: addr), len)
        }
        if rc != 0 {
            fail(.unreachable)
            return
        }
        connectTimer.schedule(after: timeout)
    }

    /// Where the request goes; valid while not closed.
    public var output: OpaquePointer? { bev.map { bufferevent_get_output($0) } }

    public var isOutputCongested: Bool {
        guard let output else { return false }
        let congested = evbuffer_get_length(output) > HTTPClientConnection.outputHighWater
        if congested { wantsDrainCallback = true }
        return congested
    }

    /// Prepares to read the response of a request about to be written.
    public func beginExchange(delegate: any HTTPClientDelegate, isHead: Bool) {
        self.delegate = delegate
        reader.reset()
        reader.requestWasHead = isHead
        headDone = false
        receivedResponseBytes = false
        readPaused = false
        if state == .idle { state = .active }
        if let bev { bufferevent_enable(bev, Int16(EV_READ | EV_WRITE)) }
    }

    /// Back to the pool: the previous response was whole and keep-alive.
    public func becomeIdle() {
        guard state == .active, let bev else { return }
        state = .idle
        delegate = nil
        completedExchanges += 1
        bufferevent_enable(bev, Int16(EV_READ))
    }

    public func pauseReading() {
        readPaused = true
        if let bev { bufferevent_disable(bev, Int16(EV_READ)) }
    }

    public func resumeReading() {
        guard readPaused, let bev else { return }
        readPaused = false
        bufferevent_enable(bev, Int16(EV_READ))
        readable()
    }

    /// Closes without telling the delegate (the exchange gave up on it).
    public func close() {
        guard let bev else { return }
        bufferevent_free(bev)
        self.bev = nil
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

    private func readable() {
        guard let bev else { return }
        let input = bufferevent_get_input(bev)!
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
                if self.bev == nil || state != .active { return }
                continue
            }
            let done: Bool
            do {
                done = try reader.readBody(from: input, into: scratch)
            } catch {
                fail(.badResponse)
                return
            }
            if evbuffer_get_length(scratch) > 0 {
                delegate?.clientResponseBody(self, buffer: scratch)
                evbuffer_drain(scratch, evbuffer_get_length(scratch))
                if self.bev == nil || state != .active { return }
            }
            if done {
                finishResponse()
            }
            return
        }
    }

    private func finishResponse() {
        let d = delegate
        // Keep-alive only for a delimited response the upstream did not close.
        if !reader.keepAlive || reader.framing == .untilClose {
            delegate = nil
            close()
        }
        d?.clientResponseEnd(self)
    }

    private func writable() {
        if wantsDrainCallback {
            wantsDrainCallback = false
            delegate?.clientOutputDrained(self)
        }
    }

    private func event(_ what: Int16) {
        if what & Int16(BEV_EVENT_CONNECTED) != 0 {
            connectTimer.cancel()
            if let bev { setNoDelay(bufferevent_getfd(bev)) }
            state = .active
            delegate?.clientConnected(self)
            return
        }
        if state == .connecting {
            fail(.unreachable)
            return
        }
        if state == .idle {
            close()
            return
        }
        if what & Int16(BEV_EVENT_EOF) != 0 && headDone && reader.framing == .untilClose {
            // A close-delimited body ends here: drain what is left first.
            readable()
            guard bev != nil else { return }
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

    public var isOpen: Bool { bev != nil }
}
