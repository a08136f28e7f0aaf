import Config
public import HTTP
import Loop
import Meters

/// Why an upstream exchange produced no whole response.
public enum UpstreamFailure: Sendable, Equatable {
    /// The connection failed (`ClientFailure` says how).
    case connection(ClientFailure)
    /// The exchange's own deadline passed (`sync_timeout`, or a job's `timeout`).
    case timedOut
    /// The response head arrived but cannot be relayed or kept (an HTTP/1.1
    /// response without framing).
    case badResponseHead
}

/// The upstream side of one exchange, the same for a proxied request and a
/// job's attempt: a slot at the upstream's gate, a pooled or new
/// connection, the request sent, the response head and its end; and one
/// more try on a new connection when a pooled one turns out to have been
/// closed by the upstream just as it was reused (nginx's rule: only for a
/// request that is safe to send twice). A value: events return the action
/// to perform; `UpstreamExchange` and its owner perform it.
public struct UpstreamExchangeMachine: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        /// Not begun.
        case idle
        /// Queued at the gate for a slot.
        case waitingForSlot
        /// A slot is held; a connection is being found or made. `retry`:
        /// this one replaces a pooled connection that was found closed.
        case connecting(retry: Bool)
        /// The request is going out; the response head is awaited. `pooled`:
        /// on a reused connection, where a reset may only mean it was stale.
        case exchanging(pooled: Bool, retry: Bool)
        /// The response head arrived; the body is being received.
        case receiving
        /// Over. `grantPending`: it ended while queued, so a slot may still
        /// be granted to it, and must then be given back at once.
        case finished(grantPending: Bool)
    }

    public enum Event: Sendable, Equatable {
        /// Start, with what the gate said when the owner asked for a slot
        /// (a job's caller asks before the run begins).
        case begin(GateOutcome)
        /// The gate granted the slot the queued exchange waited for.
        case slotAcquired
        /// `connect` found an idle pooled connection.
        case pooledConnection
        /// A new connection is established.
        case connected
        case responseHead
        case responseEnd
        case failed(UpstreamFailure)
        /// The owner gives up: its client left, or its job was canceled.
        case abandon
    }

    public enum Action: Sendable, Equatable {
        case none
        /// Take a pooled connection (then `pooledConnection`) or make one.
        case connect
        /// Make a new connection (the pooled one is already closed).
        case reconnect
        /// Write the request.
        case send
        /// Hand the response head to the owner.
        case deliverHead
        /// A whole response: keep the connection, give the slot back, end.
        case complete
        /// Close the connection, give the slot back if held, report `failure`.
        case fail(UpstreamFailure, releaseSlot: Bool)
        /// The gate refused: nothing to give back; the owner answers 503.
        case refuse
        /// Close the connection, give the slot back if held; nothing is reported.
        case abandon(releaseSlot: Bool)
        /// A late grant: give the slot back.
        case releaseSlot
    }

    public private(set) var state = State.idle
    /// Safe to send twice: the one condition of the stale-connection retry.
    public var resendable: Bool

    public init(resendable: Bool) {
        self.resendable = resendable
    }

    /// The request went (or is going) out on a connection.
    public var requestSent: Bool {
        switch state {
        case .exchanging, .receiving: return true
        default: return false
        }
    }

    public var isFinished: Bool {
        if case .finished = state { return true }
        return false
    }

    /// Holds a slot of the gate.
    private var holdsSlot: Bool {
        switch state {
        case .connecting, .exchanging, .receiving: return true
        default: return false
        }
    }

    // Inlined: called with a constant event on every proxied request, the
    // switch folds to the one case that event can take.
    @inline(__always)
    public mutating func handle(_ event: Event) -> Action {
        switch (state, event) {
        case (.idle, .begin(.acquired)), (.waitingForSlot, .slotAcquired):
            state = .connecting(retry: false)
            return .connect
        case (.idle, .begin(.queued)):
            state = .waitingForSlot
            return .none
        case (.idle, .begin(.rejected)):
            state = .finished(grantPending: false)
            return .refuse
        case (.waitingForSlot, .failed(let failure)):
            // The deadline passed in the queue: the grant is still to come.
            state = .finished(grantPending: true)
            return .fail(failure, releaseSlot: false)
        case (.waitingForSlot, .abandon):
            state = .finished(grantPending: true)
            return .abandon(releaseSlot: false)
        case (.finished(grantPending: true), .slotAcquired):
            state = .finished(grantPending: false)
            return .releaseSlot

        case (.connecting(let retry), .pooledConnection):
            state = .exchanging(pooled: true, retry: retry)
            return .send
        case (.connecting(let retry), .connected):
            state = .exchanging(pooled: false, retry: retry)
            return .send
        case (.exchanging(pooled: true, retry: false), .failed(.connection(.reset))) where resendable:
            state = .connecting(retry: true)
            return .reconnect
        case (.exchanging, .responseHead):
            state = .receiving
            return .deliverHead
        case (.receiving, .responseEnd):
            state = .finished(grantPending: false)
            return .complete

        case (_, .failed(let failure)) where holdsSlot:
            state = .finished(grantPending: false)
            return .fail(failure, releaseSlot: true)
        case (_, .abandon) where holdsSlot:
            state = .finished(grantPending: false)
            return .abandon(releaseSlot: true)

        default:
            // Late or out-of-order events (a timer after the last byte, a
            // callback after an abandon) change nothing.
            return .none
        }
    }
}

/// The connection side of `UpstreamExchangeMachine`'s actions, shared by
/// the sync exchange (`ProxyExchange`) and the job runner: the owner is
/// the connection's delegate, feeds the machine through `handle`, and does
/// what the returned action leaves to it (send, deliver, report). A class:
/// a connection may fail inside `connect`, calling back into `handle`.
public final class UpstreamExchange {
    public private(set) var machine: UpstreamExchangeMachine
    public private(set) var target: UpstreamTarget!
    /// The connection of the current try, while there is one.
    public private(set) var connection: HTTPClientConnection?
    /// The whole request went out: a completed exchange's connection may be
    /// pooled. The sync exchange clears it while the client's body streams.
    public var requestComplete = true
    /// The owner, which holds this object and is its connections' delegate,
    /// and the proxy of its loop. Both outlive it: not counted (this is on
    /// the path of every proxied request).
    private unowned(unsafe) var owner: (any HTTPClientDelegate)?
    private let proxy: Unmanaged<ProxyLoop>
    /// `target` again, borrowed for calls (the strong one keeps it).
    private var borrowedTarget: Unmanaged<UpstreamTarget>?
    private var isHead = false
    /// When the slot was granted, for `upstream_request_duration_seconds`;
    /// 0 when the exchange is not counted (metrics off, a receiver).
    private var meterStart: UInt64 = 0

    /// `begin` names the owner and the request before the first event.
    public init(proxy: ProxyLoop) {
        self.proxy = Unmanaged.passUnretained(proxy)
        self.machine = UpstreamExchangeMachine(resendable: false)
    }

    /// Calls `body` with the proxy and the target, neither counted: calls
    /// through stored references would retain and release each per use.
    @inline(__always)
    private func withProxyAndTarget<R>(_ body: (ProxyLoop, UpstreamTarget) -> R) -> R {
        proxy._withUnsafeGuaranteedRef { p in borrowedTarget!._withUnsafeGuaranteedRef { t in body(p, t) } }
    }

    /// Gives the slot back to the target's gate (a `let` of the target: not counted).
    @inline(__always)
    private func releaseSlot() {
        borrowedTarget!._withUnsafeGuaranteedRef { $0.gate.release() }
    }

    /// Starts (or, for reused exchanges, starts over) for one request, on
    /// behalf of `owner`.
    public func begin(owner: any HTTPClientDelegate, target: UpstreamTarget, resendable: Bool, isHead: Bool) {
        self.owner = owner
        // Mostly the same target as the last request's: not stored again.
        if self.target !== target {
            self.target = target
            borrowedTarget = Unmanaged.passUnretained(target)
        }
        self.isHead = isHead
        machine = UpstreamExchangeMachine(resendable: resendable)
        connection = nil
        requestComplete = true
        meterStart = 0
    }

    /// Feeds `event`, performs the connection and slot side of the action,
    /// and returns the action for the owner. `.connect` comes back as `.send`
    /// when a pooled connection was taken, or as `.none` while a new one is
    /// being made (`connected` follows, or a failure).
    @inline(__always)
    public func handle(_ event: UpstreamExchangeMachine.Event) -> UpstreamExchangeMachine.Action {
        let action = machine.handle(event)
        switch action {
        case .connect:
            if withProxyAndTarget({ p, t in p.metering && t.meterSlot != MeterLabels.uncounted }) {
                meterStart = monotonicNanos()
            }
            if let pooled = withProxyAndTarget({ $0.takeIdleConnection(for: $1) }) {
                pooled.beginExchange(delegate: owner!, isHead: isHead)
                connection = pooled
                return machine.handle(.pooledConnection)
            }
            connectFresh()
            return .none
        case .reconnect:
            connectFresh()
            return .none
        case .complete:
            if meterStart != 0 { count(code: connection?.reader.status ?? 0) }
            if let c = connection.take() {
                let written = requestComplete
                withProxyAndTarget { $0.checkIn(c, to: $1, requestWritten: written) }
            }
            releaseSlot()
        case .fail(let failure, let release):
            if meterStart != 0 { count(fault: UpstreamFault(failure)) }
            connection.take()?.close()
            if release { releaseSlot() }
        case .abandon(let release):
            if meterStart != 0 { count(fault: .aborted) }
            connection.take()?.close()
            if release { releaseSlot() }
        case .releaseSlot:
            releaseSlot()
        case .none, .send, .deliverHead, .refuse:
            break
        }
        return action
    }

    /// `upstream_requests_total` and the exchange's duration, once.
    private func count(code: Int = 0, fault: UpstreamFault? = nil) {
        let now = monotonicNanos()
        let start = meterStart
        withProxyAndTarget { p, t in
            guard p.metering else { return }
            let m = p.meterTable, slot = t.meterSlot
            if let fault {
                m.add(MeterKey(.upstreamRequests, slot: slot, 1, fault.rawValue))
            } else {
                m.add(MeterKey(.upstreamRequests, slot: slot, 0, code))
            }
            m.observe(.upstreamDuration, slot: slot, p.latencyBuckets, nanos: now &- start)
        }
        meterStart = 0
    }

    private func connectFresh() {
        let c = proxy.takeUnretainedValue().newUpstream(delegate: owner!, isHead: isHead)
        // Stored first: `connect` may fail at once, through the delegate.
        connection = c
        c.connect(to: target.address, timeout: target.config.connectTimeout, tls: target.tls, serverName: target.config.url.host)
    }
}

extension UpstreamFault {
    init(_ failure: UpstreamFailure) {
        switch failure {
        case .timedOut: self = .timeout
        case .badResponseHead: self = .badResponse
        case .connection(let c):
            switch c {
            case .unreachable: self = .unreachable
            case .connectTimeout: self = .connectTimeout
            case .tlsFailed: self = .tls
            case .reset: self = .reset
            case .badResponse: self = .badResponse
            case .truncated: self = .truncated
            }
        }
    }
}
