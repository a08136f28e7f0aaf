/// One client connection's phases, as a value: the request side, the
/// response side and whether the connection outlives the exchange, then
/// its close. `HTTPServerConnection` owns the socket, the parser and the
/// timer, reports events here and performs what comes back.
///
///     request:  idle --bytes--> head --head--> body (bodyPaused) --body end--> done
///     response: none --start--> streaming (chunked, bodyless) --end--> done
///     both done: keep-alive -> idle/none; else phase flushing
///     phase: open --closeAfterFlush--> flushing --output sent--> lingering --timer/EOF--> closed
///
/// Every field is a one-byte value: this runs several times per request,
/// and a flat layout costs the data path no payload packing.
struct ServerConnectionMachine: Equatable {
    enum Request: UInt8 {
        /// Between requests (`idle_timeout` runs).
        case idle
        /// Bytes of a head arrived (`header_timeout` runs from the first).
        case head
        /// The body is being read (`body_timeout`) ...
        case body
        /// ... or would be, but the handler's consumer lags.
        case bodyPaused
        /// Read whole; the handler owes (the rest of) the response.
        case done
    }

    enum Response: UInt8 {
        case none
        /// The head is written; body bytes go out as they are ...
        case streaming
        /// ... as chunks ...
        case streamingChunked
        /// ... or not at all (HEAD, 204, 304...).
        case streamingBodyless
        case done
    }

    enum Phase: UInt8 {
        /// Serving requests in order.
        case open
        /// The last bytes are being sent before the close.
        case flushing
        /// Sent and the output shut: input is discarded for a moment, so the
        /// close does not reset the connection under the response.
        case lingering
        case closed
    }

    /// What the connection's timer means now.
    enum Deadline: Equatable { case header, body }

    enum TimerAction: Equatable {
        case none
        case close
        /// The request did not come in time: answer 408.
        case timedOut(Deadline)
        /// A response is still going out to a client that reads it: wait
        /// another period (the timer closes a connection whose output stands
        /// still, not one whose reader is slow).
        case wait
    }

    /// What ending a response leads to.
    enum AfterResponse: Equatable {
        /// The request is whole too: finish the exchange.
        case finishExchange
        /// The body is being read still, though complete in the parser
        /// (a bodyless request answered at once): the read loop finishes it.
        case awaitBodyEnd
        /// Answered before the body was read: the rest cannot be skipped
        /// safely, so the connection closes once the response is out.
        case closeAfterFlush
        case none
    }

    enum DrainAction: Equatable { case none, close, closeAfterFlush }

    private(set) var phase = Phase.open
    /// The request side; meaningful while `open`.
    private(set) var request = Request.idle
    /// The response side; meaningful while `open`.
    private(set) var response = Response.none
    /// Another request may follow this one on the connection.
    private(set) var keepAlive = true
    /// While streaming: a producer waits for the output to drain.
    private(set) var congested = false

    @inline(__always)
    var isOpen: Bool { phase == .open }

    @inline(__always)
    var isClosing: Bool { phase != .open }

    @inline(__always)
    var isReadingBody: Bool { phase == .open && (request == .body || request == .bodyPaused) }

    @inline(__always)
    var isStreaming: Bool {
        phase == .open && (response == .streaming || response == .streamingChunked || response == .streamingBodyless)
    }

    @inline(__always)
    var hasResponseStarted: Bool { phase != .open || response != .none }

    // MARK: Reading

    /// Bytes of a new request arrived: true if a head begins (it was idle).
    @inline(__always)
    mutating func headBegins() -> Bool {
        guard phase == .open, request == .idle else { return false }
        request = .head
        return true
    }

    /// A whole head; `keepAlive` as the request asks (and no drain began).
    @inline(__always)
    mutating func headComplete(keepAlive: Bool) {
        request = .body
        response = .none
        congested = false
        self.keepAlive = keepAlive
    }

    @inline(__always)
    mutating func pauseBody() {
        if phase == .open && request == .body { request = .bodyPaused }
    }

    /// True if the body was paused (reading goes on now).
    @inline(__always)
    mutating func resumeBody() -> Bool {
        guard phase == .open, request == .bodyPaused else { return false }
        request = .body
        return true
    }

    /// The body is whole: true when the response is done too.
    @inline(__always) @discardableResult
    mutating func bodyComplete() -> Bool {
        guard isReadingBody else { return false }
        request = .done
        return response == .done
    }

    // MARK: Writing

    /// The answer will not let the connection be reused (its request body
    /// is not read): say so in its head.
    @inline(__always)
    mutating func refuseKeepAlive() {
        if phase == .open { keepAlive = false }
    }

    /// The response head goes out. `streamed`: no length known; `bodyless`:
    /// no body bytes; `http10`: the client speaks HTTP/1.0; `draining`: the
    /// server stops. Returns the framing to write and whether the
    /// connection stays open after, or nil if no response may start now.
    @inline(__always)
    mutating func startResponse(streamed: Bool, bodyless: Bool, http10: Bool, draining: Bool)
        -> (chunked: Bool, keepAlive: Bool)? {
        guard phase == .open, response == .none else { return nil }
        if draining { keepAlive = false }
        var chunked = false
        if streamed {
            if http10 {
                keepAlive = false  // close-delimited
            } else if !bodyless {
                chunked = true
            }
        }
        response = bodyless ? .streamingBodyless : chunked ? .streamingChunked : .streaming
        return (chunked, keepAlive)
    }

    /// The output passed its high-water mark while streaming: a producer waits.
    @inline(__always)
    mutating func outputCongested() {
        if isStreaming { congested = true }
    }

    /// The output drained: true if a producer waited for it.
    @inline(__always)
    mutating func outputDrained() -> Bool {
        guard isStreaming, congested else { return false }
        congested = false
        return true
    }

    /// The response is complete. `bodyReadWhole`: the parser has the whole
    /// request body (so an unfinished read loop will end it).
    @inline(__always)
    mutating func endResponse(bodyReadWhole: Bool) -> AfterResponse {
        guard isStreaming else { return .none }
        response = .done
        congested = false
        switch request {
        case .done:
            return .finishExchange
        case .body where bodyReadWhole, .bodyPaused where bodyReadWhole:
            return .awaitBodyEnd
        default:
            keepAlive = false
            return .closeAfterFlush
        }
    }

    /// Both sides are done: true if the connection waits for the next
    /// request (`idle_timeout`), false if it closes after the flush.
    @inline(__always)
    mutating func finishExchange() -> Bool {
        guard phase == .open, keepAlive else { return false }
        request = .idle
        response = .none
        return true
    }

    // MARK: Failing and closing

    /// The request broke a rule or ran out of time: true if it is to be
    /// answered with the error (nothing was sent yet), false to close at once.
    mutating func requestFailed() -> Bool {
        guard phase == .open, response == .none else { return false }
        request = .done
        keepAlive = false
        return true
    }

    /// Starts the close after the buffered output: false if already closing.
    mutating func closeAfterFlush() -> Bool {
        guard phase == .open else { return false }
        phase = .flushing
        return true
    }

    /// The output is sent: true if the linger begins now.
    mutating func linger() -> Bool {
        guard phase == .flushing else { return false }
        phase = .lingering
        return true
    }

    /// The timer fired. `progressed`: the client took response bytes since
    /// it was armed. Between requests and while flushing before a close,
    /// the timer is `idle_timeout`, renewed as long as the client keeps
    /// taking bytes: the last response of an exchange may still be on its
    /// way out (a result replay queues a whole spooled file at once), and a
    /// slow reader that keeps reading must get all of it, then a whole
    /// `idle_timeout` for its next request.
    func timerFired(progressed: Bool = false) -> TimerAction {
        switch phase {
        case .flushing: return progressed ? .wait : .close
        case .lingering: return .close
        case .closed: return .none
        case .open:
            switch request {
            case .idle: return progressed ? .wait : .close
            case .head: return .timedOut(.header)
            case .body, .bodyPaused: return .timedOut(.body)
            case .done: return .none
            }
        }
    }

    /// The peer closed its side (`cleanly`: EOF, not an error). True if the
    /// connection stays to answer a request it has whole (then closes).
    mutating func peerClosed(cleanly: Bool) -> Bool {
        guard cleanly, phase == .open, request == .done, response != .done else { return false }
        keepAlive = false
        return true
    }

    /// SIGTERM: finish the exchange under way, then close. What to do now.
    mutating func drain(inputPending: Bool, outputPending: Bool) -> DrainAction {
        guard phase == .open else { return .none }
        keepAlive = false
        guard !isStreaming, request == .idle, !inputPending else { return .none }
        return outputPending ? .closeAfterFlush : .close
    }

    /// The connection is closed: true if the handler must hear that its
    /// exchange was cut short.
    mutating func closed() -> Bool {
        let cut = phase == .open && (request != .idle || isStreaming)
        phase = .closed
        return cut
    }
}
