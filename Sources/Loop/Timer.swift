import CLibevent

/// A one-shot timer on one loop. The owner keeps it; `deinit` frees the event.
///
/// The action is set once at creation. It usually captures its owner unowned,
/// since the owner holds the timer.
public final class Timer {
    private var event: OpaquePointer?
    private let action: () -> Void
    /// The last two delays armed, as timevals: a timer mostly alternates
    /// between one or two (a connection's idle and header timeouts), and
    /// converting a Duration is 128-bit arithmetic.
    private var recent: (Duration, timeval, Duration, timeval) = (.zero, timeval(), .zero, timeval())

    public init(loop: EventLoop, action: @escaping () -> Void) {
        self.action = action
        self.event = nil
        self.event = CLibevent_evtimer_new(loop.base, { _, _, arg in
            // The action may drop the last reference to its timer (a timer
            // kept only until it fires): keep it alive until the action
            // returns; libevent allows freeing a fired event in its callback.
            let timer = Unmanaged<Timer>.fromOpaque(arg!).takeUnretainedValue()
            withExtendedLifetime(timer) { timer.action() }
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        if let event { event_free(event) }
    }

    /// (Re)arms the timer to fire once after `after`.
    public func schedule(after: Duration) {
        var tv: timeval
        if after == recent.0 && after != .zero {
            tv = recent.1
        } else if after == recent.2 && after != .zero {
            tv = recent.3
        } else {
            tv = timeval(after)
            recent = (after, tv, recent.0, recent.1)
        }
        event_add(event, &tv)
    }

    public func cancel() {
        event_del(event)
    }

    public var isScheduled: Bool {
        event_pending(event, Int16(EV_TIMEOUT), nil) != 0
    }
}

extension timeval {
    public init(_ d: Duration) {
        let (seconds, attoseconds) = d.components
        let micros = attoseconds / 1_000_000_000_000
        self.init(tv_sec: Int(max(0, seconds)), tv_usec: Int(max(0, micros)))
    }
}

/// Wraps a loop-confined value so it can ride inside a `@Sendable` closure
/// back to the same loop. Access checks the thread, as NIOLoopBound does.
public struct LoopBound<Value>: @unchecked Sendable {
    public let loop: EventLoop
    private let _value: Value

    public init(_ value: Value, loop: EventLoop) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self._value = value
    }

    public var value: Value {
        loop.preconditionInEventLoop()
        return _value
    }
}
