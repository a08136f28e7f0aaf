import CLibevent
import Config
import HTTP
import Loop

/// One proxied request in `sync` mode: client request -> upstream -> client.
///
/// States: `waitingForSlot` (queued at the upstream's gate) -> `connecting`
/// (a new upstream connection is being made) -> `exchanging` (request being
/// written, response awaited) -> `relaying` (response head sent to the
/// client, body streaming) -> `finished`. Every failure path ends in
/// `finished` with the slot released exactly once.
///
/// Exchanges are reused per loop (`ProxyLoop.makeExchange`): the buffers and
/// the timer are made once, `begin` resets the per-request state, and the
/// connection's `detached` call hands a finished exchange back.
final class ProxyExchange: RequestHandler, HTTPClientDelegate {
    enum State { case waitingForSlot, connecting, exchanging, relaying, finished }

    unowned let proxy: ProxyLoop
    private(set) var client: HTTPServerConnection!
    private var route: CompiledRoute!
    var target: UpstreamTarget { route.upstream }

    private var state = State.finished
    private var upstream: HTTPClientConnection?
    private var holdsSlot = false
    /// Queued at the gate at some point: a grant may still arrive, so this
    /// exchange is not reused.
    private(set) var wasQueued = false
    private var timer: Timer!
    /// The serialized upstream request head, kept for one retry on a stale
    /// keep-alive connection.
    private let head = ByteWriter(capacity: 1024)
    /// Body bytes that arrived before an upstream connection was ready.
    private let pending: OpaquePointer
    private var chunkedUpstream = false
    private var requestHasBody = false
    private var requestComplete = false
    private var retried = false
    /// The head went out: body bytes now go straight to the upstream.
    private var headSent = false
    private var isHead = false
    /// Safe to send twice (RFC 9110 §9.2.2): the only requests retried.
    private var isIdempotent = false

    init(proxy: ProxyLoop) {
        self.proxy = proxy
        self.pending = evbuffer_new()
        timer = Timer(loop: proxy.loop) { [unowned self] in self.timedOut() }
    }

    deinit {
        evbuffer_free(pending)
    }

    func begin(client: HTTPServerConnection, request: MessageReader, route: CompiledRoute) {
        self.client = client
        self.route = route
        state = .waitingForSlot
        upstream = nil
        holdsSlot = false
        retried = false
        headSent = false
        isHead = request.isHead
        isIdempotent = request.isIdempotent
        evbuffer_drain(pending, evbuffer_get_length(pending))
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
        requestComplete = !requestHasBody
        RequestSerializer.write(request: request, peer: client.peer, target: route.upstream, into: head)
        start()
    }

    private func start() {
        client.logUpstream = target.name
        timer.schedule(after: target.config.syncTimeout)
        // The waiter (and its closure) is built only if the request must queue.
        switch target.gate.acquire(.init(loop: proxy.loop, grant: { [bound = LoopBound(self, loop: proxy.loop)] in
            bound.value.slotGranted()
        })) {
        case .acquired:
            holdsSlot = true
            connect()
        case .queued:
            wasQueued = true
        case .rejected:
            finish()
            client.respondError(.upstreamQueueFull)
        }
    }

    /// The client connection let go of this exchange.
    func detached(from connection: HTTPServerConnection) {
        client = nil
        if state == .finished && !wasQueued {
            proxy.recycle(self)
        }
    }

    private func slotGranted() {
        holdsSlot = true
        guard state == .waitingForSlot else {
            releaseSlot()
            return
        }
        connect()
    }

    private func connect() {
        if let pooled = proxy.pool(for: target)?.take() {
            upstream = pooled
            pooled.beginExchange(delegate: self, isHead: isHead)
            sendRequest()
            return
        }
        freshConnection()
    }

    private func freshConnection() {
        state = .connecting
        headSent = false
        let c = proxy.newUpstream(delegate: self, isHead: isHead)
        upstream = c
        c.connect(to: target.address, timeout: target.config.connectTimeout)
    }

    func clientConnected(_ connection: HTTPClientConnection) {
        sendRequest()
    }

    private func sendRequest() {
        guard let upstream, let out = upstream.output else { return }
        state = .exchanging
        headSent = true
        evbuffer_add(out, head.base, head.count)
        if evbuffer_get_length(pending) > 0 {
            evbuffer_add_buffer(out, pending)
        }
        if requestComplete && chunkedUpstream {
            evbuffer_add(out, "0\r\n\r\n", 5)
        }
        upstream.writeNow()
        client.resumeReadingBody()
    }

    // MARK: Client side

    func requestBody(_ buffer: OpaquePointer, connection: HTTPServerConnection) {
        let n = evbuffer_get_length(buffer)
        let out: OpaquePointer
        if headSent, let o = upstream?.output {
            out = o
        } else {
            out = pending
        }
        if chunkedUpstream { CLibevent_evbuffer_add_chunk_header(out, n) }
        evbuffer_add_buffer(out, buffer)
        if chunkedUpstream { evbuffer_add(out, "\r\n", 2) }
        if out != pending { upstream?.flushSoon() }
        // Backpressure: stop reading the client while the upstream lags.
        if out == pending {
            if evbuffer_get_length(pending) > HTTPClientConnection.outputHighWater { client.pauseReadingBody() }
        } else if upstream?.isOutputCongested == true {
            client.pauseReadingBody()
        }
    }

    func requestEnd(connection: HTTPServerConnection) {
        requestComplete = true
        guard requestHasBody, chunkedUpstream else { return }
        if headSent, let out = upstream?.output {
            evbuffer_add(out, "0\r\n\r\n", 5)
            upstream?.flushSoon()
        }
    }

    func outputDrained(connection: HTTPServerConnection) {
        upstream?.resumeReading()
    }

    func connectionClosed(connection: HTTPServerConnection) {
        // The client is gone: the upstream exchange is abandoned mid-way.
        upstream?.close()
        upstream = nil
        finish()
    }

    func clientOutputDrained(_ connection: HTTPClientConnection) {
        client.resumeReadingBody()
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
                fail(.badResponse)
                return
            }
            framing = .streamed
        }
        state = .relaying
        client.startResponse(status: response.status, reason: response.reason, framing: framing) { w in
            ResponseSerializer.writeHeaders(of: response, into: w)
        }
    }

    func clientResponseBody(_ connection: HTTPClientConnection, buffer: OpaquePointer) {
        client.writeBody(buffer)
        if client.isOutputCongested {
            connection.pauseReading()
        }
    }

    func clientResponseEnd(_ connection: HTTPClientConnection) {
        proxy.checkIn(connection, to: target, requestWritten: requestComplete)
        upstream = nil
        finish()
        client.endResponse()
    }

    func clientFailed(_ connection: HTTPClientConnection, failure: ClientFailure) {
        upstream = nil
        // A reused keep-alive connection may have been closed by the upstream
        // just as we sent: retry once on a new one if nothing can be lost.
        if failure == .reset && connection.completedExchanges > 0 && !retried && !requestHasBody && isIdempotent {
            retried = true
            freshConnection()
            return
        }
        switch failure {
        case .unreachable:
            fail(.upstreamUnreachable)
        case .connectTimeout:
            fail(.upstreamConnectTimeout)
        case .reset:
            fail(.upstreamReset)
        case .badResponse:
            fail(.badResponse)
        case .truncated:
            fail(.upstreamTruncated)
        }
    }

    private func timedOut() {
        guard state != .finished else { return }
        upstream?.close()
        upstream = nil
        fail(.syncTimeout)
    }

    /// Ends the exchange with an error: a JSON answer if nothing was sent
    /// yet, else the client connection is closed so it sees the truncation.
    private func fail(_ error: HTTPError) {
        upstream?.close()
        upstream = nil
        let started = client.hasResponseStarted
        finish()
        if started {
            client.abort()
        } else {
            client.respondError(error)
        }
    }

    private func finish() {
        guard state != .finished else { return }
        state = .finished
        timer.cancel()
        releaseSlot()
    }

    private func releaseSlot() {
        if holdsSlot {
            holdsSlot = false
            target.gate.release()
        }
    }
}
