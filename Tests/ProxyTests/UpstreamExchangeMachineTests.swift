import HTTP
import Proxy
import Testing

/// The upstream side of an exchange, every transition, without sockets.
@Suite struct UpstreamExchangeMachineTests {
    typealias M = UpstreamExchangeMachine

    /// A machine driven through `events`; the actions, in order.
    static func run(_ events: [M.Event], resendable: Bool = true) -> (M, [M.Action]) {
        var m = M(resendable: resendable)
        let actions = events.map { m.handle($0) }
        return (m, actions)
    }

    @Test func aSlotAtOnceThenAPooledConnectionThenAWholeResponse() {
        let (m, actions) = Self.run([.begin(.acquired), .pooledConnection, .responseHead, .responseEnd])
        #expect(actions == [.connect, .send, .deliverHead, .complete])
        #expect(m.state == .finished(grantPending: false))
    }

    @Test func aNewConnection() {
        var m = M(resendable: false)
        #expect(m.handle(.begin(.acquired)) == .connect)
        #expect(m.state == .connecting(retry: false))
        #expect(!m.requestSent)
        #expect(m.handle(.connected) == .send)
        #expect(m.state == .exchanging(pooled: false, retry: false))
        #expect(m.requestSent)
        #expect(m.handle(.responseHead) == .deliverHead)
        #expect(m.state == .receiving)
        #expect(m.requestSent)
        #expect(m.handle(.responseEnd) == .complete)
        #expect(m.isFinished)
    }

    @Test func queuedThenGranted() {
        let (m, actions) = Self.run([.begin(.queued), .slotAcquired, .connected])
        #expect(actions == [.none, .connect, .send])
        #expect(m.state == .exchanging(pooled: false, retry: false))
    }

    @Test func aFullQueueIsRefusedWithNoSlotToGiveBack() {
        let (m, actions) = Self.run([.begin(.rejected), .slotAcquired, .responseEnd])
        #expect(actions == [.refuse, .none, .none])
        #expect(m.state == .finished(grantPending: false))
    }

    /// Race: the client leaves (or the deadline passes) while queued, then
    /// the grant arrives: the slot goes back at once, exactly once.
    @Test func aGrantAfterAnAbandonWhileQueuedIsGivenBack() {
        let (m, actions) = Self.run([.begin(.queued), .abandon, .slotAcquired, .slotAcquired])
        #expect(actions == [.none, .abandon(releaseSlot: false), .releaseSlot, .none])
        #expect(m.state == .finished(grantPending: false))
        let (t, timed) = Self.run([.begin(.queued), .failed(.timedOut), .slotAcquired])
        #expect(timed == [.none, .fail(.timedOut, releaseSlot: false), .releaseSlot])
        #expect(t.state == .finished(grantPending: false))
    }

    /// A pooled connection reset before any response byte: once more on a
    /// new connection if the request is safe to send twice; never twice.
    @Test func aStalePooledConnectionIsRetriedOnceWhenResendable() {
        let reset = M.Event.failed(.connection(.reset))
        let (m, actions) = Self.run([.begin(.acquired), .pooledConnection, reset, .connected, reset])
        #expect(actions == [.connect, .send, .reconnect, .send, .fail(.connection(.reset), releaseSlot: true)])
        #expect(m.isFinished)
        // Also when the replacement is itself pooled later: the retry is spent.
        var r = M(resendable: true)
        _ = r.handle(.begin(.acquired))
        _ = r.handle(.pooledConnection)
        #expect(r.handle(reset) == .reconnect)
        #expect(r.state == .connecting(retry: true))
        #expect(r.handle(.pooledConnection) == .send)
        #expect(r.state == .exchanging(pooled: true, retry: true))
        #expect(r.handle(reset) == .fail(.connection(.reset), releaseSlot: true))
    }

    @Test func noRetryWhenNotResendableOrNotPooledOrNotAReset() {
        let reset = M.Event.failed(.connection(.reset))
        #expect(Self.run([.begin(.acquired), .pooledConnection, reset], resendable: false).1.last
            == .fail(.connection(.reset), releaseSlot: true))
        #expect(Self.run([.begin(.acquired), .connected, reset]).1.last == .fail(.connection(.reset), releaseSlot: true))
        for failure in [ClientFailure.unreachable, .connectTimeout, .badResponse, .truncated] {
            #expect(Self.run([.begin(.acquired), .pooledConnection, .failed(.connection(failure))]).1.last
                == .fail(.connection(failure), releaseSlot: true))
        }
        // After the head, a reset is a truncation of a response: no retry.
        #expect(Self.run([.begin(.acquired), .pooledConnection, .responseHead, reset]).1.last
            == .fail(.connection(.reset), releaseSlot: true))
    }

    @Test func failuresInEveryStateThatHoldsASlot() {
        let f = M.Event.failed(.connection(.unreachable))
        #expect(Self.run([.begin(.acquired), f]).1.last == .fail(.connection(.unreachable), releaseSlot: true))
        #expect(Self.run([.begin(.acquired), .connected, .failed(.badResponseHead)]).1.last
            == .fail(.badResponseHead, releaseSlot: true))
        #expect(Self.run([.begin(.acquired), .connected, .responseHead, .failed(.timedOut)]).1.last
            == .fail(.timedOut, releaseSlot: true))
    }

    @Test func abandonInEveryState() {
        #expect(Self.run([.begin(.acquired), .abandon]).1.last == .abandon(releaseSlot: true))
        #expect(Self.run([.begin(.acquired), .connected, .abandon]).1.last == .abandon(releaseSlot: true))
        #expect(Self.run([.begin(.acquired), .connected, .responseHead, .abandon]).1.last == .abandon(releaseSlot: true))
        #expect(Self.run([.abandon]).1 == [.none])
        #expect(Self.run([.begin(.acquired), .connected, .responseHead, .responseEnd, .abandon]).1.last == M.Action.none)
    }

    /// Race: the deadline and the last byte. Whichever comes first wins;
    /// the other changes nothing (the slot is given back once).
    @Test func timeoutVersusLastByte() {
        let (a, first) = Self.run([.begin(.acquired), .connected, .responseHead, .responseEnd, .failed(.timedOut)])
        #expect(first.suffix(2) == [.complete, .none])
        #expect(a.state == .finished(grantPending: false))
        let (b, second) = Self.run([.begin(.acquired), .connected, .responseHead, .failed(.timedOut), .responseEnd])
        #expect(second.suffix(2) == [.fail(.timedOut, releaseSlot: true), .none])
        #expect(b.state == .finished(grantPending: false))
    }

    @Test func outOfOrderEventsChangeNothing() {
        var m = M(resendable: true)
        for event in [M.Event.slotAcquired, .pooledConnection, .connected, .responseHead, .responseEnd] {
            #expect(m.handle(event) == .none)
            #expect(m.state == .idle)
        }
        _ = m.handle(.begin(.acquired))
        #expect(m.handle(.responseEnd) == .none)  // no head yet
        #expect(m.handle(.begin(.acquired)) == .none)  // begun once
        #expect(m.state == .connecting(retry: false))
    }
}
