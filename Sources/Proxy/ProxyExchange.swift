import Config
import HTTP
import Logging
import Loop

/// One proxied request in `sync` mode: client request -> upstream -> client.
///
/// The upstream side (slot, connection, the stale-connection retry, the
/// response's end or failure) is `UpstreamExchange`, shared with job runs;
/// this class streams the client's body to it (pending until a connection
/// is ready, with backpressure both ways) and relays the response.
///
/// Exchanges are reused per loop (`ProxyLoop.recycle`): the buffers, the
/// timer and the upstream core are made once, `begin` resets the
/// per-request state, and the connection's `detached` call hands a finished
/// exchange back.
final class ProxyExchange: RequestHandler, HTTPClientDelegate {
    unowned let proxy: ProxyLoop
    /// The client connection, which holds this exchange as its handler and
    /// calls `detached` (clearing this) before it can go away: borrowed, not
    /// counted, since each use on the request path would retain and release it.
    private var borrowedClient: Unmanaged<HTTPServerConnection>?
    private let upstream: UpstreamExchange
    var target: UpstreamTarget { upstream.target! }

    private let timer: Timer
    /// The serialized upstream request head, kept for one retry on a stale
    /// keep-alive connection.
    private let head = ByteWriter(capacity: 1024)
    /// Body bytes that arrived before an upstream connection was ready.
    private let pending = EventBuffer()
    private var chunkedUpstream = false
    private var requestHasBody = false
    private var isHead = false
    /// The whole response came with its head (a small one, the usual case):
    /// its end follows in the same callback, and that flush sends head and
    /// body together; none is deferred for them.
    private var responseBuffered = false

    init(proxy: ProxyLoop) {
        self.proxy = proxy
        self.upstream = UpstreamExchange(proxy: proxy)
        timer = Timer(loop: proxy.loop)
        timer.setAction { [unowned self] in self.timedOut() }
    }

    /// Calls `body` with the client connection (`borrowedClient`).
    @inline(__always)
    private func withClient<R>(_ body: (HTTPServerConnection) -> R) -> R {
        borrowedClient!._withUnsafeGuaranteedRef(body)
    }

    func begin(client: HTTPServerConnection, request: MessageReader, route: CompiledRoute) {
        borrowedClient = Unmanaged.passUnretained(client)
        let target = route.upstream
        isHead = request.isHead
        pending.removeAll()
        switch request.framing {
        case .chunked:
            chunkedUpstream = true
            requestHasBody = true
        case .length:
            chunkedUpstream = false
            requestHasBody = true
        default:
            chunkedUpstream = false
            requestHasBody = false
        }
        // A request whose body was streamed cannot be sent again.
        upstream.begin(owner: self, target: target, resendable: !requestHasBody && request.isIdempotent, isHead: isHead)
        upstream.requestComplete = !requestHasBody
        RequestSerializer.write(request: request, peer: client.peer, target: target, into: head)
        client.logUpstream = target.name
        timer.schedule(after: target.config.syncTimeout)
        if target.gate.tryAcquire() {
            perform(.begin(.acquired))
        } else {
            let waiter = GateWaiter(loop: proxy.loop) { [bound = LoopBound(self, loop: proxy.loop)] in
                bound.value.perform(.slotAcquired)
            }
            perform(.begin(target.gate.acquire(waiter, force: false)))
        }
    }

    /// Feeds the upstream core and does this side of its action. Inlined:
    /// each caller's event is a constant, so the core's switch folds.
    @inline(__always)
    private func perform(_ event: UpstreamExchangeMachine.Event) {
        switch upstream.handle(event) {
        case .send:
            sendRequest()
        case .deliverHead, .none, .connect, .reconnect, .releaseSlot:
            break
        case .complete:
            timer.cancel()
            withClient { $0.endResponse() }
        case .refuse:
            timer.cancel()
            withClient { $0.respondError(.upstreamQueueFull) }
        case .fail(let failure, _):
            timer.cancel()
            // A JSON answer if nothing was sent yet, else the client
            // connection is closed so it sees the truncation.
            withClient { client in
                if client.hasResponseStarted {
                    client.abort()
                } else {
                    client.respondError(Self.error(failure))
                }
            }
        case .abandon:
            timer.cancel()
        }
    }

    static func error(_ failure: UpstreamFailure) -> HTTPError {
        switch failure {
        case .connection(.unreachable), .connection(.tlsFailed): return .upstreamUnreachable
        case .connection(.connectTimeout): return .upstreamConnectTimeout
        case .connection(.reset): return .upstreamReset
        case .connection(.badResponse), .badResponseHead: return .badResponse
        case .connection(.truncated): return .upstreamTruncated
        case .timedOut: return .syncTimeout
        }
    }

    /// The client connection let go of this exchange.
    func detached(from connection: HTTPServerConnection) {
        borrowedClient = nil
        // A grant still on its way would reach a reused exchange: keep this one out.
        if upstream.machine.state == .finished(grantPending: false) {
            proxy.recycle(self)
        }
    }

    func clientConnected(_ connection: HTTPClientConnection) {
        perform(.connected)
    }

    private func sendRequest() {
        guard let connection = upstream.connection,
              connection.sendRequest(head: head, body: pending, lastChunk: upstream.requestComplete && chunkedUpstream)
        else { return }
        // Only a body's reading can have been paused.
        if requestHasBody { withClient { $0.resumeReadingBody() } }
    }

    // MARK: Client side

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {
        // Backpressure: stop reading the client while the upstream lags.
        if upstream.machine.requestSent, let sending = upstream.connection,
           sending.sendBody(buffer, chunked: chunkedUpstream) {
            if sending.isOutputCongested { withClient { $0.pauseReadingBody() } }
            return
        }
        if chunkedUpstream {
            pending.moveAsChunk(from: buffer)
        } else {
            pending.moveAll(from: buffer)
        }
        if pending.count > HTTPClientConnection.outputHighWater { withClient { $0.pauseReadingBody() } }
    }

    func requestEnd(connection: HTTPServerConnection) {
        upstream.requestComplete = true
        guard requestHasBody, chunkedUpstream else { return }
        if upstream.machine.requestSent, let c = upstream.connection {
            c.sendBody(nil, chunked: true)
        }
    }

    func outputDrained(connection: HTTPServerConnection) {
        upstream.connection?.resumeReading()
    }

    func connectionClosed(connection: HTTPServerConnection) {
        // The client is gone: the upstream exchange is abandoned mid-way.
        perform(.abandon)
    }

    func clientOutputDrained(_ connection: HTTPClientConnection) {
        withClient { $0.resumeReadingBody() }
    }

    // MARK: Upstream side

    func clientResponseHead(_ connection: HTTPClientConnection, response: MessageReader) {
        let framing: ResponseFraming
        switch response.framing {
        case .none:
            let noLength = response.status < 200 || response.status == 204
            framing = .none(contentLength: noLength ? nil : response.declaredContentLength)
        case .length(let n):
            framing = .contentLength(n)
        case .chunked:
            framing = .streamed
        case .untilClose:
            // An HTTP/1.1 response without framing cannot be told apart from
            // a truncated one: refuse it. HTTP/1.0 servers may close-delimit.
            guard response.versionMinor == 0 else {
                perform(.failed(.badResponseHead))
                return
            }
            framing = .streamed
        }
        guard upstream.handle(.responseHead) == .deliverHead else { return }
        responseBuffered = connection.holdsWholeResponse
        withClient { client in
            client.startResponse(status: response.status, reason: response.reason, framing: framing,
                                 endsNow: responseBuffered) { w in
                ResponseSerializer.writeHeaders(of: response, into: w)
            }
        }
    }

    func clientResponseBody(_ connection: HTTPClientConnection, buffer: EventBuffer) {
        withClient { client in
            client.writeBody(buffer, endsNow: responseBuffered)
            if client.isOutputCongested {
                connection.pauseReading()
            }
        }
    }

    func clientResponseEnd(_ connection: HTTPClientConnection) {
        perform(.responseEnd)
    }

    func clientFailed(_ connection: HTTPClientConnection, failure: ClientFailure) {
        if case .tlsFailed(let reason) = failure {
            proxy.log.warning("upstream \(target.name): \(reason)")
        }
        perform(.failed(.connection(failure)))
    }

    private func timedOut() {
        perform(.failed(.timedOut))
    }
}
