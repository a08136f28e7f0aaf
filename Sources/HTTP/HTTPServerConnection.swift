import CHTTPParser
import CLibevent
import Loop

#if canImport(Glibc)
import Glibc
#endif

/// How the response body is delimited on the client connection.
public enum ResponseFraming: Equatable {
    /// No body follows; a Content-Length to state is given for HEAD and 304.
    case none(contentLength: Int64?)
    case contentLength(Int64)
    /// Length unknown: chunked to HTTP/1.1 clients, close-delimited to 1.0.
    case streamed
}

/// One client connection: reads requests in order, hands each to a handler,
/// writes its response, and keeps the connection alive or closes it.
///
/// Its phases (request side, response side, keep-alive, the close) are
/// `ServerConnectionMachine`'s; this class owns the socket, the parser, the
/// timer and the handler, and does what the machine's answers say.
public final class HTTPServerConnection: ChannelDelegate {
    public let server: HTTPServer
    public let peer: [UInt8]
    public let reader: MessageReader
    public let headWriter = ByteWriter(capacity: 2048)

    private let channel: Channel
    private var machine = ServerConnectionMachine()
    private var handler: (any RequestHandler)?
    private var retained: Unmanaged<HTTPServerConnection>?
    private let timer: Timer
    private let scratch = EventBuffer()
    private let rawScratch: OpaquePointer
    /// Monotonic time the current request's first byte arrived.
    public private(set) var requestStart: UInt64 = 0
    /// Response status of the current exchange (for logs).
    public private(set) var responseStatus = 0
    /// The route the current request was counted under (a `MeterLabels`
    /// slot); set when it is routed, 0 (unrouted) until then.
    public var meterRoute = 0
    /// The upstream name of the current exchange, for the access log.
    public var logUpstream: String?
    /// The job id prefix the access log shows for this exchange.
    public var logJob: String?
    /// Requests served on this connection.
    public private(set) var requestCount = 0
    /// While the idle timer watches the client take the last response (it
    /// was armed with output pending): `channel.bytesDelivered` then; bytes
    /// taken since keep a slow reader's connection open. Nil on the usual
    /// path, where the response left at once: no ioctl per request.
    private var deliveredAtArm: Int?

    /// Output above this is congested: producers should stop and wait for `outputDrained`.
    public static let outputHighWater = 256 * 1024
    static let outputLowWater = 64 * 1024

    init(server: HTTPServer, fd: Int32, peer: [UInt8]) {
        self.server = server
        self.peer = peer
        self.reader = MessageReader(kind: .request, capacity: server.limits.maxHeaderBytes)
        setNoDelay(fd)
        self.channel = Channel(loop: server.loop, fd: fd)
        self.rawScratch = scratch.raw
        self.timer = Timer(loop: server.loop)
        timer.setAction { [unowned self] in self.timerFired() }
    }

    func start() {
        retained = Unmanaged.passRetained(self)
        channel.delegate = self
        // Reading pauses by itself when unconsumed input passes this mark:
        // that bounds pipelined input and a paused request body.
        channel.inputHighWater = server.limits.maxHeaderBytes + 64 * 1024
        channel.outputLowWater = HTTPServerConnection.outputLowWater
        // Client connections are plain TCP: a file added to the output
        // (`writeBodyFile`) goes out with sendfile, never mapped or read.
        evbuffer_set_flags(channel.rawOutput, UInt64(EVBUFFER_FLAG_DRAINS_TO_FD))
        channel.startReading()
        timer.schedule(after: server.limits.headerTimeout)
    }

    private var isClosed: Bool { channel.isClosed }

    // MARK: Reading

    public func channelReadable(_ channel: Channel) {
        process()
    }

    public func channelConnected(_ channel: Channel, error: Int32) {}

    /// True while `process` runs: calls that would re-enter it (a handler
    /// answering synchronously, resuming a paused body) just change state,
    /// and the running loop picks the change up.
    private var processing = false

    private func process() {
        guard !processing, !isClosed else { return }
        processing = true
        defer {
            processing = false
            channel.inputConsumed()
        }
        let input = channel.rawInput
        while !isClosed {
            guard machine.isOpen else {
                // Closing: what still arrives is discarded.
                evbuffer_drain(input, evbuffer_get_length(input))
                return
            }
            switch machine.request {
            case .idle, .head:
                if machine.request == .idle {
                    skipEmptyLines(input)
                    if evbuffer_get_length(input) == 0 { return }
                    _ = machine.headBegins()
                    requestStart = monotonicNanos()
                    meterRoute = 0
                    if requestCount > 0 { timer.schedule(after: server.limits.headerTimeout) }
                }
                let result: MessageReader.HeadResult
                do {
                    result = try reader.readHead(from: input)
                } catch {
                    fail(error)
                    return
                }
                guard result == .complete else { return }
                requestCount += 1
                machine.headComplete(keepAlive: reader.keepAlive && !server.draining)
                responseStatus = 0
                logUpstream = nil
                logJob = nil
                if case .length(let n) = reader.framing, n > server.limits.maxRequestBody {
                    fail(.bodyTooLarge)
                    return
                }
                if reader.isMessageComplete {
                    timer.cancel()
                } else {
                    timer.schedule(after: server.limits.bodyTimeout)
                    if reader.expectContinue {
                        evbuffer_add(channel.rawOutput, "HTTP/1.1 100 Continue\r\n\r\n", 25)
                        channel.flushSoon()
                    }
                }
                // Body bytes that came with the head are decoded before any
                // handler exists: a framing error in them is answered here,
                // before anything is sent upstream (SPEC §6).
                var early: Bool?
                if !reader.isMessageComplete && evbuffer_get_length(input) > 0 {
                    guard let done = readBody(input) else { return }
                    early = done
                }
                handler = server.service.handler(for: reader, on: self)
                if let done = early, !deliverBody(done: done) { return }

            case .body:
                guard let done = readBody(input), deliverBody(done: done) else { return }

            case .bodyPaused, .done:
                return
            }
        }
    }

    /// Decodes the body bytes in `input` into `scratch`: whether the body
    /// is complete, or nil after a framing error or an oversized body (the
    /// connection has answered it).
    private func readBody(_ input: OpaquePointer) -> Bool? {
        let done: Bool
        do {
            done = try reader.readBody(from: input, into: rawScratch)
        } catch {
            fail(error)
            return nil
        }
        if reader.bodyBytesRead > server.limits.maxRequestBody {
            fail(.bodyTooLarge)
            return nil
        }
        return done
    }

    /// Hands decoded body bytes to the handler, then the body's end once
    /// `done`. False when `process` must stop reading for now.
    @inline(__always)
    private func deliverBody(done: Bool) -> Bool {
        if evbuffer_get_length(rawScratch) > 0 {
            handler?.requestBody(scratch, connection: self)
            evbuffer_drain(rawScratch, evbuffer_get_length(rawScratch))
            if isClosed { return true }
            guard machine.isReadingBody else { return true }
        }
        guard done else { return false }
        machine.bodyComplete()
        timer.cancel()
        handler?.requestEnd(connection: self)
        // The handler may have answered (and finished the exchange) inside.
        if machine.isOpen && machine.request == .done && machine.response == .done {
            finishExchange()
        }
        return true
    }

    private func skipEmptyLines(_ input: OpaquePointer) {
        // RFC 9112 §2.2: ignore empty lines (CRLF, or a bare LF) before a
        // request line. A CR without its LF is no empty line: it stays, for
        // the reader to refuse (or to take with the LF once that arrives).
        while let p = evbuffer_pullup(input, 1) {
            if p[0] == 0x0A {
                evbuffer_drain(input, 1)
            } else if p[0] == 0x0D, evbuffer_get_length(input) >= 2, let q = evbuffer_pullup(input, 2), q[1] == 0x0A {
                evbuffer_drain(input, 2)
            } else {
                return
            }
        }
    }

    /// Stops handing request body to the handler (its upstream is congested).
    public func pauseReadingBody() { machine.pauseBody() }

    /// Resumes after `pauseReadingBody`, first with what is already buffered.
    public func resumeReadingBody() {
        guard machine.resumeBody() else { return }
        process()
    }

    // MARK: Writing

    /// True when the client is slow: stop producing until `outputDrained`.
    public var isOutputCongested: Bool {
        let congested = evbuffer_get_length(channel.rawOutput) > HTTPServerConnection.outputHighWater
        if congested {
            machine.outputCongested()
            channel.wantsWritable = true
        }
        return congested
    }

    public var isRequestHead: Bool { reader.isHead }
    public var hasResponseStarted: Bool { machine.hasResponseStarted }
    public var isClientHTTP10: Bool { reader.versionMinor == 0 }

    /// Writes the status line, the caller's headers, the framing and
    /// Connection headers. The caller's closure appends end-to-end headers.
    /// `endsNow`: the caller calls `endResponse` before its callback
    /// returns, and that flushes; no deferred flush is scheduled (libevent
    /// would activate an event, then delete it again at the end).
    public func startResponse(status: Int, reason: UnsafeBufferPointer<UInt8>? = nil, framing: ResponseFraming,
                              endsNow: Bool = false, headers: (ByteWriter) -> Void) {
        var bodyless = reader.isHead
        var streamed = false
        switch framing {
        case .none: bodyless = true
        case .contentLength: break
        case .streamed: streamed = true
        }
        guard !isClosed, let (chunked, keepAlive) = machine.startResponse(
            streamed: streamed, bodyless: bodyless, http10: reader.versionMinor == 0, draining: server.draining)
        else { return }
        responseStatus = status
        let w = headWriter
        w.reset()
        w.append("HTTP/1.1 ")
        w.append(decimal: Int64(status))
        w.append(byte: 0x20)
        if let reason, reason.count > 0 {
            w.append(reason)
        } else {
            let text = http_status_str(http_status(UInt32(status)))!
            w.append(UnsafeBufferPointer(start: UnsafeRawPointer(text).assumingMemoryBound(to: UInt8.self), count: strlen(text)))
        }
        w.append("\r\n")
        headers(w)
        switch framing {
        case .none(let length):
            if let length { w.header("Content-Length", decimal: length) }
        case .contentLength(let n):
            w.header("Content-Length", decimal: n)
        case .streamed:
            if chunked { w.header("Transfer-Encoding", "chunked") }
        }
        if !keepAlive {
            w.header("Connection", "close")
        } else if reader.versionMinor == 0 {
            w.header("Connection", "keep-alive")
        }
        w.append("\r\n")
        w.flush(to: channel.rawOutput)
        if !endsNow { channel.flushSoon() }
    }

    /// Moves all of `buffer` to the client, framed. `endsNow` as for
    /// `startResponse`.
    public func writeBody(_ buffer: EventBuffer, endsNow: Bool = false) {
        let n = evbuffer_get_length(buffer.raw)
        guard !isClosed, machine.isStreaming, n > 0 else { return }
        if machine.response == .streamingBodyless {
            buffer.drain(n)
            return
        }
        let chunkedResponse = machine.response == .streamingChunked
        let out = channel.rawOutput
        if !endsNow { channel.flushSoon() }
        if chunkedResponse {
            CLibevent_evbuffer_add_chunk_header(out, n)
            evbuffer_add_buffer(out, buffer.raw)
            evbuffer_add(out, "\r\n", 2)
        } else {
            evbuffer_add_buffer(out, buffer.raw)
        }
    }

    public func writeBody(_ bytes: UnsafeBufferPointer<UInt8>, endsNow: Bool = false) {
        guard !isClosed, machine.isStreaming, machine.response != .streamingBodyless, bytes.count > 0 else { return }
        let chunkedResponse = machine.response == .streamingChunked
        let out = channel.rawOutput
        if !endsNow { channel.flushSoon() }
        if chunkedResponse { CLibevent_evbuffer_add_chunk_header(out, bytes.count) }
        evbuffer_add(out, bytes.baseAddress, bytes.count)
        if chunkedResponse { evbuffer_add(out, "\r\n", 2) }
    }

    /// Appends `length` bytes of the open file `fd` to the body, sent with
    /// sendfile(2): the bytes never pass through the process's memory
    /// (mapped, they would count in its RSS until sent, a whole result per
    /// reader). Takes `fd`: closed once sent, or at once when no body is
    /// written. False if it could not be added: the body is then short,
    /// and the caller aborts.
    public func writeBodyFile(_ fd: Int32, length: Int64) -> Bool {
        guard !isClosed, machine.isStreaming, machine.response != .streamingBodyless, length > 0 else {
            Glibc.close(fd)
            return true
        }
        let chunkedResponse = machine.response == .streamingChunked
        let out = channel.rawOutput
        channel.flushSoon()
        if chunkedResponse { CLibevent_evbuffer_add_chunk_header(out, Int(length)) }
        guard evbuffer_add_file(out, fd, 0, length) == 0 else {
            Glibc.close(fd)
            return false
        }
        if chunkedResponse { evbuffer_add(out, "\r\n", 2) }
        return true
    }

    /// The response is complete.
    public func endResponse() {
        guard !isClosed, machine.isStreaming else { return }
        if machine.response == .streamingChunked {
            evbuffer_add(channel.rawOutput, "0\r\n\r\n", 5)
        }
        let after = machine.endResponse(bodyReadWhole: reader.isMessageComplete)
        channel.flush()
        switch after {
        case .finishExchange:
            finishExchange()
        case .awaitBodyEnd, .none:
            break  // a bodyless request answered at once: `process` finishes it
        case .closeAfterFlush:
            // Answered before the request body ended: the rest of the body
            // is not read, so the connection cannot be reused.
            dropHandler()
            closeAfterFlush()
        }
    }

    /// A whole response in one call (the proxy's own answers).
    public func respond(status: Int, contentType: StaticString, body: UnsafeBufferPointer<UInt8>,
                        headers: (ByteWriter) -> Void = { _ in }) {
        // Answered before the request body was read: the connection will
        // close after this response, so say so in its head.
        if machine.isReadingBody, !reader.isMessageComplete { machine.refuseKeepAlive() }
        startResponse(status: status, framing: .contentLength(Int64(body.count)), endsNow: true) { w in
            w.header("Content-Type", contentType)
            headers(w)
        }
        writeBody(body, endsNow: true)
        endResponse()
    }

    /// SPEC §6 JSON error: {"error":{"code":"...","message":"..."}}.
    public func respondError(_ error: HTTPError, headers: (ByteWriter) -> Void = { _ in }) {
        let body = ByteWriter(capacity: 256)
        error.writeJSON(into: body)
        respond(status: error.status, contentType: "application/json", body: body.bytes) { w in
            if error.retryAfter > 0 { w.header("Retry-After", decimal: Int64(error.retryAfter)) }
            headers(w)
        }
    }

    /// Closes now: the client sees a truncated message if one was under way.
    public func abort() {
        close()
    }

    // MARK: Lifecycle

    /// Lets go of the current handler and tells it so, exactly once.
    private func dropHandler() {
        guard let h = handler else { return }
        handler = nil
        h.detached(from: self)
    }

    private func finishExchange() {
        dropHandler()
        server.onExchangeEnd?(self)
        guard machine.finishExchange() else {
            closeAfterFlush()
            return
        }
        reader.reset()
        armIdleTimer()
        // Pipelined requests already buffered are served now, in order.
        if !processing, evbuffer_get_length(channel.rawInput) > 0 {
            process()
        }
    }

    /// An error the connection answers itself, then closes.
    private func fail(_ error: HTTPError) {
        guard machine.requestFailed() else {
            close()
            return
        }
        let h = handler
        handler = nil
        h?.connectionClosed(connection: self)
        h?.detached(from: self)
        if isClosed { return }
        if requestStart == 0 { requestStart = monotonicNanos() }
        // Answered and logged through endResponse, which then closes.
        respondError(error)
    }

    /// Sends what is buffered, half-closes, discards input briefly, closes:
    /// closing with unread input would reset the connection and could
    /// destroy the response before the client reads it.
    private func closeAfterFlush() {
        guard !isClosed, machine.closeAfterFlush() else { return }
        dropHandler()
        channel.outputLowWater = 0
        channel.inputHighWater = 0
        channel.flush()
        if channel.pendingOutput == 0 {
            lingeringClose()
        } else {
            // A client that stops reading must not hold the connection forever.
            armIdleTimer()
        }
    }

    /// `idle_timeout` from now. Watching the delivery (by default, when
    /// output is pending), it is renewed while the client takes some bytes
    /// in each period (`timerFired`).
    private func armIdleTimer(watchingDelivery watch: Bool? = nil) {
        deliveredAtArm = (watch ?? (channel.pendingOutput > 0)) ? channel.bytesDelivered : nil
        timer.schedule(after: server.limits.idleTimeout)
    }

    private func lingeringClose() {
        guard !isClosed, machine.linger() else { return }
        channel.shutdownOutput()
        evbuffer_drain(channel.rawInput, evbuffer_get_length(channel.rawInput))
        channel.startReading()
        timer.schedule(after: .seconds(2))
    }

    /// Finish the current exchange, then close (SIGTERM drain).
    func drain() {
        switch machine.drain(inputPending: evbuffer_get_length(channel.rawInput) > 0,
                             outputPending: channel.pendingOutput > 0) {
        case .none: break
        case .close: close()
        case .closeAfterFlush: closeAfterFlush()  // the last response is still on its way out
        }
    }

    public func channelWritable(_ channel: Channel) {
        if machine.isClosing {
            if channel.pendingOutput == 0 { lingeringClose() }
            return
        }
        if machine.request == .idle && channel.pendingOutput == 0 {
            // The last response has left the buffer only now (the socket may
            // hold some still): the idle time starts once the client has it.
            armIdleTimer(watchingDelivery: true)
            return
        }
        if machine.outputDrained() {
            handler?.outputDrained(connection: self)
        }
    }

    public func channelClosed(_ channel: Channel, error: Int32) {
        // Half-close after a complete request: answer it, then close.
        if machine.peerClosed(cleanly: error == 0) { return }
        close()
    }

    private func timerFired() {
        let progressed = deliveredAtArm.map { channel.bytesDelivered != $0 } ?? false
        switch machine.timerFired(progressed: progressed) {
        case .wait: armIdleTimer(watchingDelivery: true)
        case .close: close()
        case .timedOut(.header): fail(.headerTimeout)
        case .timedOut: fail(.bodyTimeout)
        case .none: break
        }
    }

    private func close() {
        guard !isClosed else { return }
        channel.close()
        timer.cancel()
        let h = handler
        handler = nil
        if machine.closed() {
            h?.connectionClosed(connection: self)
        }
        h?.detached(from: self)
        server.connectionDidClose(self)
        retained?.release()
        retained = nil
    }

    public var isOpen: Bool { !isClosed }
}

