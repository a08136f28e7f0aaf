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
/// Request side: `idle` (between requests) -> `head` (bytes of a head
/// arrived; header_timeout runs from the first one) -> `body` (body_timeout)
/// -> `done` (the handler owes the response; pipelined bytes wait in the
/// input buffer). Response side: `none` -> `streaming` -> `done`. When both
/// sides are done the connection goes back to `idle`, or closes.
public final class HTTPServerConnection: ChannelDelegate {
    enum RequestState { case idle, head, body, done }
    enum ResponseState { case none, streaming, done }

    public let server: HTTPServer
    public let peer: [UInt8]
    public let reader: MessageReader
    public let headWriter = ByteWriter(capacity: 2048)

    private let channel: Channel
    private var requestState = RequestState.idle
    private var responseState = ResponseState.none
    private var handler: (any RequestHandler)?
    private var keepAlive = true
    private var closing = false
    private var chunkedResponse = false
    private var suppressBody = false
    private var readingPaused = false
    private var wantsDrainCallback = false
    private var retained: Unmanaged<HTTPServerConnection>?
    private var timer: Timer!
    private let scratch = EventBuffer()
    private let rawScratch: OpaquePointer
    /// Monotonic time the current request's first byte arrived.
    public private(set) var requestStart: UInt64 = 0
    /// Response status of the current exchange (for logs).
    public private(set) var responseStatus = 0
    /// The upstream name of the current exchange, for the access log.
    public var logUpstream: String?
    /// The job id prefix the access log shows for this exchange.
    public var logJob: String?
    /// Requests served on this connection.
    public private(set) var requestCount = 0

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
        self.timer = Timer(loop: server.loop) { [unowned self] in self.timerFired() }
    }

    func start() {
        retained = Unmanaged.passRetained(self)
        channel.delegate = self
        // Reading pauses by itself when unconsumed input passes this mark:
        // that bounds pipelined input and a paused request body.
        channel.inputHighWater = server.limits.maxHeaderBytes + 64 * 1024
        channel.outputLowWater = HTTPServerConnection.outputLowWater
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
            switch requestState {
            case .idle, .head:
                if closing {
                    evbuffer_drain(input, evbuffer_get_length(input))
                    return
                }
                if requestState == .idle {
                    skipEmptyLines(input)
                    if evbuffer_get_length(input) == 0 { return }
                    requestState = .head
                    requestStart = monotonicNanos()
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
                requestState = .body
                readingPaused = false
                wantsDrainCallback = false
                responseState = .none
                responseStatus = 0
                logUpstream = nil
                logJob = nil
                keepAlive = reader.keepAlive && !server.draining
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
                if readingPaused { return }
                guard let done = readBody(input), deliverBody(done: done) else { return }

            case .done:
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
    private func deliverBody(done: Bool) -> Bool {
        if evbuffer_get_length(rawScratch) > 0 {
            handler?.requestBody(scratch, connection: self)
            evbuffer_drain(rawScratch, evbuffer_get_length(rawScratch))
            if isClosed || requestState != .body { return true }
        }
        guard done else { return false }
        requestState = .done
        timer.cancel()
        handler?.requestEnd(connection: self)
        if requestState == .done && responseState == .done {
            finishExchange()
        }
        return true
    }

    private func skipEmptyLines(_ input: OpaquePointer) {
        // RFC 9112 §2.2: ignore empty lines before a request line.
        while let p = evbuffer_pullup(input, 1), p[0] == 0x0D || p[0] == 0x0A {
            evbuffer_drain(input, 1)
        }
    }

    /// Stops handing request body to the handler (its upstream is congested).
    public func pauseReadingBody() { readingPaused = true }

    /// Resumes after `pauseReadingBody`, first with what is already buffered.
    public func resumeReadingBody() {
        guard readingPaused else { return }
        readingPaused = false
        process()
    }

    // MARK: Writing

    /// True when the client is slow: stop producing until `outputDrained`.
    public var isOutputCongested: Bool {
        let congested = evbuffer_get_length(channel.rawOutput) > HTTPServerConnection.outputHighWater
        if congested {
            wantsDrainCallback = true
            channel.wantsWritable = true
        }
        return congested
    }

    public var isRequestHead: Bool { reader.isHead }
    public var hasResponseStarted: Bool { responseState != .none }
    public var isClientHTTP10: Bool { reader.versionMinor == 0 }

    /// Writes the status line, the caller's headers, the framing and
    /// Connection headers. The caller's closure appends end-to-end headers.
    public func startResponse(status: Int, reason: UnsafeBufferPointer<UInt8>? = nil, framing: ResponseFraming,
                              headers: (ByteWriter) -> Void) {
        guard !isClosed, responseState == .none else { return }
        responseState = .streaming
        responseStatus = status
        if server.draining || closing { keepAlive = false }
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
        suppressBody = reader.isHead
        chunkedResponse = false
        switch framing {
        case .none(let length):
            suppressBody = true
            if let length { w.header("Content-Length", decimal: length) }
        case .contentLength(let n):
            w.header("Content-Length", decimal: n)
        case .streamed:
            if reader.versionMinor == 0 {
                keepAlive = false
            } else if !suppressBody {
                chunkedResponse = true
                w.header("Transfer-Encoding", "chunked")
            }
        }
        if !keepAlive {
            w.header("Connection", "close")
        } else if reader.versionMinor == 0 {
            w.header("Connection", "keep-alive")
        }
        w.append("\r\n")
        w.flush(to: channel.rawOutput)
        channel.flushSoon()
    }

    /// Moves all of `buffer` to the client, framed.
    public func writeBody(_ buffer: EventBuffer) {
        let n = evbuffer_get_length(buffer.raw)
        guard !isClosed, responseState == .streaming, n > 0 else { return }
        if suppressBody {
            buffer.drain(n)
            return
        }
        let out = channel.rawOutput
        channel.flushSoon()
        if chunkedResponse {
            CLibevent_evbuffer_add_chunk_header(out, n)
            evbuffer_add_buffer(out, buffer.raw)
            evbuffer_add(out, "\r\n", 2)
        } else {
            evbuffer_add_buffer(out, buffer.raw)
        }
    }

    public func writeBody(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard !isClosed, responseState == .streaming, bytes.count > 0, !suppressBody else { return }
        let out = channel.rawOutput
        channel.flushSoon()
        if chunkedResponse { CLibevent_evbuffer_add_chunk_header(out, bytes.count) }
        evbuffer_add(out, bytes.baseAddress, bytes.count)
        if chunkedResponse { evbuffer_add(out, "\r\n", 2) }
    }

    /// The response is complete.
    public func endResponse() {
        guard !isClosed, responseState == .streaming else { return }
        if chunkedResponse {
            evbuffer_add(channel.rawOutput, "0\r\n\r\n", 5)
        }
        responseState = .done
        channel.flush()
        if requestState == .done {
            finishExchange()
        } else if requestState == .body && reader.isMessageComplete {
            // Bodyless request answered at once: `process` finishes it.
        } else {
            // Answered before the request body ended: the rest of the body
            // is not read, so the connection cannot be reused.
            keepAlive = false
            dropHandler()
            closeAfterFlush()
        }
    }

    /// A whole response in one call (the proxy's own answers).
    public func respond(status: Int, contentType: StaticString, body: UnsafeBufferPointer<UInt8>,
                        headers: (ByteWriter) -> Void = { _ in }) {
        // Answered before the request body was read: the connection will
        // close after this response, so say so in its head.
        if requestState == .body && !reader.isMessageComplete { keepAlive = false }
        startResponse(status: status, framing: .contentLength(Int64(body.count))) { w in
            w.header("Content-Type", contentType)
            headers(w)
        }
        writeBody(body)
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
        if !keepAlive || closing {
            closeAfterFlush()
            return
        }
        reader.reset()
        requestState = .idle
        responseState = .none
        timer.schedule(after: server.limits.idleTimeout)
        // Pipelined requests already buffered are served now, in order.
        if !processing, evbuffer_get_length(channel.rawInput) > 0 {
            process()
        }
    }

    /// An error the connection answers itself, then closes.
    private func fail(_ error: HTTPError) {
        if responseState == .none {
            keepAlive = false
            let h = handler
            handler = nil
            h?.connectionClosed(connection: self)
            h?.detached(from: self)
            if isClosed { return }
            requestState = .done
            if requestStart == 0 { requestStart = monotonicNanos() }
            // Answered and logged through endResponse, which then closes.
            respondError(error)
        } else {
            close()
        }
    }

    /// Sends what is buffered, half-closes, discards input briefly, closes:
    /// closing with unread input would reset the connection and could
    /// destroy the response before the client reads it.
    private func closeAfterFlush() {
        guard !isClosed, !closing else { return }
        closing = true
        dropHandler()
        requestState = .idle
        channel.outputLowWater = 0
        channel.inputHighWater = 0
        channel.flush()
        if channel.pendingOutput == 0 {
            lingeringClose()
        } else {
            // A client that stops reading must not hold the connection forever.
            timer.schedule(after: server.limits.idleTimeout)
        }
    }

    private var lingering = false

    private func lingeringClose() {
        guard !isClosed, !lingering else { return }
        lingering = true
        channel.shutdownOutput()
        evbuffer_drain(channel.rawInput, evbuffer_get_length(channel.rawInput))
        channel.startReading()
        timer.schedule(after: .seconds(2))
    }

    /// Finish the current exchange, then close (SIGTERM drain).
    func drain() {
        keepAlive = false
        if closing { return }
        if requestState == .idle && responseState != .streaming && evbuffer_get_length(channel.rawInput) == 0 {
            // Idle, but the last response may still be on its way out.
            if channel.pendingOutput > 0 { closeAfterFlush() } else { close() }
        }
    }

    public func channelWritable(_ channel: Channel) {
        if closing {
            if channel.pendingOutput == 0 { lingeringClose() }
            return
        }
        if wantsDrainCallback {
            wantsDrainCallback = false
            handler?.outputDrained(connection: self)
        }
    }

    public func channelClosed(_ channel: Channel, error: Int32) {
        if error == 0 {
            if closing { close(); return }
            // Half-close after a complete request: answer it, then close.
            if requestState == .done && responseState != .done {
                keepAlive = false
                return
            }
        }
        close()
    }

    private func timerFired() {
        if closing { close(); return }
        switch requestState {
        case .idle:
            close()
        case .head:
            fail(.headerTimeout)
        case .body:
            fail(.bodyTimeout)
        case .done:
            break
        }
    }

    private func close() {
        guard !isClosed else { return }
        channel.close()
        timer.cancel()
        let h = handler
        handler = nil
        if requestState != .idle || responseState == .streaming {
            h?.connectionClosed(connection: self)
        }
        h?.detached(from: self)
        server.connectionDidClose(self)
        retained?.release()
        retained = nil
    }

    public var isOpen: Bool { !isClosed }
}

