@testable import HTTP
import Testing

/// A client connection's phases, every transition, without sockets.
@Suite struct ServerConnectionMachineTests {
    typealias M = ServerConnectionMachine

    /// A machine with a whole head read.
    static func afterHead(keepAlive: Bool = true) -> M {
        var m = M()
        let v1 = m.headBegins()
        #expect(v1)
        m.headComplete(keepAlive: keepAlive)
        return m
    }

    @Test func aKeepAliveExchangeReturnsToIdle() {
        var m = M()
        #expect(m.request == .idle)
        #expect(m.timerFired() == .close)  // idle_timeout
        let v2 = m.headBegins()
        #expect(v2)
        let v3 = m.headBegins()
        #expect(!v3)
        #expect(m.timerFired() == .timedOut(.header))
        m.headComplete(keepAlive: true)
        #expect(m.request == .body)
        #expect(m.timerFired() == .timedOut(.body))
        let v4 = m.bodyComplete()
        #expect(!v4)  // no response yet
        #expect(m.request == .done)
        #expect(m.timerFired() == .none)  // the handler owes the answer
        let framing = m.startResponse(streamed: false, bodyless: false, http10: false, draining: false)
        #expect(framing?.chunked == false && framing?.keepAlive == true)
        #expect(m.hasResponseStarted)
        let v5 = m.endResponse(bodyReadWhole: true)
        #expect(v5 == .finishExchange)
        let v6 = m.finishExchange()
        #expect(v6)
        #expect(m.request == .idle && m.response == .none && m.keepAlive && m.isOpen)
    }

    @Test func aResponseBeforeTheBodyEnds() {
        // Answered while the parser still lacks body bytes: close after.
        var m = Self.afterHead()
        _ = m.startResponse(streamed: false, bodyless: false, http10: false, draining: false)
        let v7 = m.endResponse(bodyReadWhole: false)
        #expect(v7 == .closeAfterFlush)
        #expect(m.request == .body && m.response == .done && !m.keepAlive)
        // A bodyless request answered at once: the read loop ends it, then
        // both sides are done.
        var b = Self.afterHead()
        _ = b.startResponse(streamed: false, bodyless: false, http10: false, draining: false)
        let v8 = b.endResponse(bodyReadWhole: true)
        #expect(v8 == .awaitBodyEnd)
        let v9 = b.bodyComplete()
        #expect(v9)
        let v10 = b.finishExchange()
        #expect(v10)
    }

    @Test func framingAndKeepAlive() {
        var chunked = Self.afterHead()
        let v11 = chunked.startResponse(streamed: true, bodyless: false, http10: false, draining: false)
        #expect(v11! == (true, true))
        #expect(chunked.response == .streamingChunked)
        let v12 = chunked.startResponse(streamed: false, bodyless: false, http10: false, draining: false)
        #expect(v12 == nil)
        var http10 = Self.afterHead()
        let v13 = http10.startResponse(streamed: true, bodyless: false, http10: true, draining: false)
        #expect(v13! == (false, false))
        var head = Self.afterHead()
        let v14 = head.startResponse(streamed: true, bodyless: true, http10: false, draining: false)
        #expect(v14! == (false, true))
        var draining = Self.afterHead()
        let v15 = draining.startResponse(streamed: false, bodyless: false, http10: false, draining: true)
        #expect(v15! == (false, false))
        var close = Self.afterHead(keepAlive: false)
        let v16 = close.startResponse(streamed: false, bodyless: false, http10: false, draining: false)
        #expect(v16!.keepAlive == false)
        _ = close.bodyComplete()
        let v17 = close.endResponse(bodyReadWhole: true)
        #expect(v17 == .finishExchange)
        let v18 = close.finishExchange()
        #expect(!v18)
        var refused = Self.afterHead()
        refused.refuseKeepAlive()
        let v19 = refused.startResponse(streamed: false, bodyless: false, http10: false, draining: false)
        #expect(v19!.keepAlive == false)
    }

    @Test func pauseAndResumeTheBody() {
        var m = Self.afterHead()
        let v20 = m.resumeBody()
        #expect(!v20)
        m.pauseBody()
        #expect(m.request == .bodyPaused)
        let v21 = m.resumeBody()
        #expect(v21)
        #expect(m.request == .body)
        _ = m.bodyComplete()
        m.pauseBody()  // only a body being read pauses
        #expect(m.request == .done)
    }

    @Test func congestionIsReportedOnceWhileStreaming() {
        var m = Self.afterHead()
        m.outputCongested()  // not streaming: nothing waits
        let v22 = m.outputDrained()
        #expect(!v22)
        _ = m.startResponse(streamed: true, bodyless: false, http10: false, draining: false)
        m.outputCongested()
        let v23 = m.outputDrained()
        #expect(v23)
        let v24 = m.outputDrained()
        #expect(!v24)
    }

    @Test func aBrokenRequestIsAnsweredIfNothingWasSent() {
        var m = Self.afterHead()
        let v25 = m.requestFailed()
        #expect(v25)
        #expect(m.request == .done && m.response == .none && !m.keepAlive)
        var started = Self.afterHead()
        _ = started.startResponse(streamed: true, bodyless: false, http10: false, draining: false)
        let v26 = started.requestFailed()
        #expect(!v26)  // the client sees a truncation instead
    }

    @Test func closingThenLingering() {
        var m = Self.afterHead()
        let v27 = m.closeAfterFlush()
        #expect(v27)
        let v28 = m.closeAfterFlush()
        #expect(!v28)
        #expect(m.isClosing && !m.isOpen)
        #expect(m.timerFired() == .close)  // the client stopped reading
        let v29 = m.linger()
        #expect(v29)
        let v30 = m.linger()
        #expect(!v30)
        #expect(m.timerFired() == .close)
        let v31 = m.closed()
        #expect(!v31)  // the handler was let go at the close's start
        #expect(m.phase == .closed)
    }

    /// Between requests and while flushing before a close, the timer is
    /// renewed while the client takes bytes: a slow reader of the last
    /// response keeps its connection, a reader that stopped does not.
    @Test func theIdleTimerWaitsForAClientThatReads() {
        var m = M()
        #expect(m.timerFired(progressed: true) == .wait)    // a response still being taken
        #expect(m.timerFired(progressed: false) == .close)  // nothing taken for a whole period
        // A request being read is timed by its own deadlines, reads or not.
        let v1 = m.headBegins()
        #expect(v1)
        #expect(m.timerFired(progressed: true) == .timedOut(.header))
        m.headComplete(keepAlive: true)
        #expect(m.timerFired(progressed: true) == .timedOut(.body))
        // Closing after a response: the same rule until the output is out.
        var f = Self.afterHead()
        let v2 = f.closeAfterFlush()
        #expect(v2)
        #expect(f.timerFired(progressed: true) == .wait)
        #expect(f.timerFired(progressed: false) == .close)
        let v3 = f.linger()
        #expect(v3)
        #expect(f.timerFired(progressed: true) == .close)  // lingering is a fixed moment
    }

    @Test func thePeerClosing() {
        // EOF after a whole request: answer it, then close.
        var m = Self.afterHead()
        _ = m.bodyComplete()
        let v32 = m.peerClosed(cleanly: true)
        #expect(v32)
        #expect(m.request == .done && m.response == .none && !m.keepAlive)
        var reset = Self.afterHead()
        _ = reset.bodyComplete()
        let v33 = reset.peerClosed(cleanly: false)
        #expect(!v33)
        var mid = Self.afterHead()
        let v34 = mid.peerClosed(cleanly: true)
        #expect(!v34)  // in the middle of a body
    }

    @Test func drain() {
        var idle = M()
        let v35 = idle.drain(inputPending: false, outputPending: false)
        #expect(v35 == .close)
        var flushing = M()
        let v36 = flushing.drain(inputPending: false, outputPending: true)
        #expect(v36 == .closeAfterFlush)
        var pipelined = M()
        let v37 = pipelined.drain(inputPending: true, outputPending: false)
        #expect(v37 == .none)
        var busy = Self.afterHead()
        let v38 = busy.drain(inputPending: false, outputPending: false)
        #expect(v38 == .none)
        #expect(busy.request == .body && !busy.keepAlive)
        var closing = Self.afterHead()
        _ = closing.closeAfterFlush()
        let v39 = closing.drain(inputPending: false, outputPending: false)
        #expect(v39 == .none)
    }

    @Test func whatAClosedConnectionTellsItsHandler() {
        var idle = M()
        let v40 = idle.closed()
        #expect(!v40)
        var head = M()
        _ = head.headBegins()
        let v41 = head.closed()
        #expect(v41)
        var body = Self.afterHead()
        let v42 = body.closed()
        #expect(v42)
        var streaming = Self.afterHead()
        _ = streaming.bodyComplete()
        _ = streaming.startResponse(streamed: true, bodyless: false, http10: false, draining: false)
        let v43 = streaming.closed()
        #expect(v43)
        #expect(streaming.timerFired() == .none)
    }
}
