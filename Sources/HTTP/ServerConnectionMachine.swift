/// One client connection's phases, as a value: the request side, the
/// response side and whether the connection outlives the exchange, then
/// its close. `HTTPServerConnection` owns the socket, the parser and the
/// timer, reports events here and performs what comes back.
///
///     open(idle) --bytes--> open(head) --head--> open(body) --body end--> open(done)
///     response:  none --start--> streaming --end--> done
///     request done + response done: keep-alive -> open(idle, none); else closing
///     closing(lingering: false) --output sent--> closing(lingering: true) --timer/EOF--> closed
struct ServerConnectionMachine: Equatable {
    enum Request: Equatable {
        /// Between requests (`idle_timeout` runs).
        case idle
        /// Bytes of a head arrived (`header_timeout` runs from the first).
        case head
        /// The body is being read (`body_timeout`); `paused` while the
        /// handler's consumer lags.
        case body(paused: Bool)
        /// Read whole; the handler owes (the rest of) the response.
        case done
    }

    enum Response: Equatable {
        case none
        /// The head is written. `chunked`: body bytes go out as chunks;
        /// `bodyless`: no body bytes go out (HEAD, 204, 304...);
        /// `congested`: a producer waits for the output to drain.
        case streaming(chunked: Bool, bodyless: Bool, congested: Bool)
        case done
    }

    enum State: Equatable {
        /// Serving; `keepAlive`: another request may follow this one.
        case open(Request, Response, keepAlive: Bool)
        /// The last bytes are being sent before the close; `lingering` once
        /// they are and the output is shut: input is discarded for a moment,
        /// so closing does not reset the connection under the response.
        case closing(lingering: Bool)
        case closed
    }

    /// What the connection's timer means now.
    enum Deadline: Equatable {
        case idle, header, body
        /// A closing connection: its client stopped reading, or the linger is over.
        case close
    }

    enum TimerAction: Equatable {
        case none
        case close
        /// The request did not come in time: answer `error` (408).
        case timedOut(Deadline)
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

    private(set) var state = State.open(.idle, .none, keepAlive: true)

    // MARK: Reading

    @inline(__always)
    var request: Request? {
        if case .open(let r, _, _) = state { return r }
        return nil
    }

    @inline(__always)
    var response: Response? {
        if case .open(_, let r, _) = state { return r }
        return nil
    }

    @inline(__always)
    var isClosing: Bool {
        switch state {
        case .closing, .closed: return true
        case .open: return false
        }
    }

    @inline(__always)
    var hasResponseStarted: Bool {
        switch response {
        case .none?: return false
        default: return true
        }
    }

    @inline(__always)
    var isStreaming: Bool {
        if case .streaming? = response { return true }
        return false
    }

    /// Bytes of a new request arrived: true if a head begins (it was idle).
    @inline(__always)
    mutating func headBegins() -> Bool {
        guard case .open(.idle, let response, let keepAlive) = state else { return false }
        state = .open(.head, response, keepAlive: keepAlive)
        return true
    }

    /// A whole head; `keepAlive` as the request asks (and no drain began).
    @inline(__always)
    mutating func headComplete(keepAlive: Bool) {
        state = .open(.body(paused: false), .none, keepAlive: keepAlive)
    }

    @inline(__always)
    mutating func pauseBody() {
        if case .open(.body, let response, let keepAlive) = state {
            state = .open(.body(paused: true), response, keepAlive: keepAlive)
        }
    }

    /// True if the body was paused (reading goes on now).
    @inline(__always)
    mutating func resumeBody() -> Bool {
        guard case .open(.body(paused: true), let response, let keepAlive) = state else { return false }
        state = .open(.body(paused: false), response, keepAlive: keepAlive)
        return true
    }

    /// The body is whole: true when the response is done too.
    @inline(__always)
    mutating func bodyComplete() -> Bool {
        guard case .open(.body, let response, let keepAlive) = state else { return false }
        state = .open(.done, response, keepAlive: keepAlive)
        return response == .done
    }

    // MARK: Writing

    /// The answer will not let the connection be reused (the body was not
    /// read, an error closes it): say so in its head.
    @inline(__always)
    mutating func refuseKeepAlive() {
        if case .open(let request, let response, _) = state {
            state = .open(request, response, keepAlive: false)
        }
    }

    /// The response head goes out. `streamed`: no length known; `bodyless`:
    /// no body bytes; `http10`: the client speaks HTTP/1.0; `draining`: the
    /// server stops. Returns the framing to write and whether the
    /// connection stays open after, or nil if no response may start now.
    @inline(__always)
    mutating func startResponse(streamed: Bool, bodyless: Bool, http10: Bool, draining: Bool)
        -> (chunked: Bool, keepAlive: Bool)? {
        guard case .open(let request, .none, var keepAlive) = state else { return nil }
        if draining { keepAlive = false }
        var chunked = false
        if streamed {
            if http10 {
                keepAlive = false  // close-delimited
            } else if !bodyless {
                chunked = true
            }
        }
        state = .open(request, .streaming(chunked: chunked, bodyless: bodyless, congested: false), keepAlive: keepAlive)
        return (chunked, keepAlive)
    }

    /// The output passed its high-water mark while streaming: a producer waits.
    @inline(__always)
    mutating func outputCongested() {
        if case .open(let request, .streaming(let chunked, let bodyless, _), let keepAlive) = state {
            state = .open(request, .streaming(chunked: chunked, bodyless: bodyless, congested: true), keepAlive: keepAlive)
        }
    }

    /// The output drained: true if a producer waited for it.
    @inline(__always)
    mutating func outputDrained() -> Bool {
        guard case .open(let request, .streaming(let chunked, let bodyless, true), let keepAlive) = state else { return false }
        state = .open(request, .streaming(chunked: chunked, bodyless: bodyless, congested: false), keepAlive: keepAlive)
        return true
    }

    /// The response is complete. `bodyReadWhole`: the parser has the whole
    /// request body (so an unfinished read loop will end it).
    @inline(__always)
    mutating func endResponse(bodyReadWhole: Bool) -> AfterResponse {
        guard case .open(let request, .streaming, let keepAlive) = state else { return .none }
        switch request {
        case .done:
            state = .open(.done, .done, keepAlive: keepAlive)
            return .finishExchange
        case .body where bodyReadWhole:
            state = .open(request, .done, keepAlive: keepAlive)
            return .awaitBodyEnd
        default:
            state = .open(request, .done, keepAlive: false)
            return .closeAfterFlush
        }
    }

    /// Both sides are done: true if the connection waits for the next
    /// request (`idle_timeout`), false if it closes after the flush.
    @inline(__always)
    mutating func finishExchange() -> Bool {
        guard case .open(_, _, true) = state else { return false }
        state = .open(.idle, .none, keepAlive: true)
        return true
    }

    // MARK: Failing and closing

    /// The request broke a rule or ran out of time: true if it is to be
    /// answered with the error (nothing was sent yet), false to close at once.
    @inline(__always)
    mutating func requestFailed() -> Bool {
        guard case .open(_, .none, _) = state else { return false }
        state = .open(.done, .none, keepAlive: false)
        return true
    }

    /// Starts the close after the buffered output: false if already closing.
    @inline(__always)
    mutating func closeAfterFlush() -> Bool {
        guard case .open = state else { return false }
        state = .closing(lingering: false)
        return true
    }

    /// The output is sent: true if the linger begins now.
    @inline(__always)
    mutating func linger() -> Bool {
        guard case .closing(lingering: false) = state else { return false }
        state = .closing(lingering: true)
        return true
    }

    /// The timer fired.
    @inline(__always)
    func timerFired() -> TimerAction {
        switch state {
        case .closing: return .close
        case .open(.idle, _, _): return .close
        case .open(.head, _, _): return .timedOut(.header)
        case .open(.body, _, _): return .timedOut(.body)
        case .open(.done, _, _), .closed: return .none
        }
    }

    /// The peer closed its side (`cleanly`: EOF, not an error). True if the
    /// connection stays to answer a request it has whole (then closes).
    @inline(__always)
    mutating func peerClosed(cleanly: Bool) -> Bool {
        guard cleanly, case .open(.done, let response, _) = state, response != .done else { return false }
        state = .open(.done, response, keepAlive: false)
        return true
    }

    /// SIGTERM: finish the exchange under way, then close. What to do now
    /// for an idle connection.
    enum DrainAction: Equatable { case none, close, closeAfterFlush }

    @inline(__always)
    mutating func drain(inputPending: Bool, outputPending: Bool) -> DrainAction {
        guard case .open(let request, let response, _) = state else { return .none }
        state = .open(request, response, keepAlive: false)
        if case .streaming = response { return .none }
        guard request == .idle, !inputPending else { return .none }
        return outputPending ? .closeAfterFlush : .close
    }

    /// The connection is closed: true if the handler must hear that its
    /// exchange was cut short.
    @inline(__always)
    mutating func closed() -> Bool {
        let cut: Bool
        switch state {
        case .open(.idle, let response, _):
            if case .streaming = response { cut = true } else { cut = false }
        case .open: cut = true
        case .closing, .closed: cut = false
        }
        state = .closed
        return cut
    }
}
