import CLibevent

#if canImport(Glibc)
import Glibc
#endif

/// A one-shot timer on one loop. The owner keeps it; `deinit` frees the event.
///
/// The action is set once, at creation or (for an owner that keeps the timer
/// in a `let`, so calls on it count no reference) just after with `setAction`.
/// It usually captures its owner unowned, since the owner holds the timer.
///
/// Lazy, in the spirit of nginx's timers: most timers are timeouts that are
/// armed and cancelled once per request (a connection's header and idle
/// timeouts, an exchange's) and almost never fire. `cancel` only disarms;
/// the libevent event stays pending, and a `schedule` whose deadline is not
/// before the pending event's reuses it instead of touching libevent's heap.
/// An event that fires before the deadline now asked for is re-added for
/// the rest, so the action does not run early (by more than a tick of the
/// coarse clock deadlines are kept in, a few milliseconds), and one that
/// fires disarmed does nothing: a busy connection costs one timer insertion
/// per timeout period instead of two per request. On a loop with
/// `preciseTimers`, deadlines are kept in the precise clock instead.
public final class Timer {
    private var event: OpaquePointer?
    private var action: () -> Void
    /// Armed to run `action` at `deadline` (monotonic nanoseconds, coarse
    /// unless the loop's timers are precise).
    private var armed = false
    private var deadline: UInt64 = 0
    /// When the pending libevent event fires; 0 while none is pending.
    private var eventFires: UInt64 = 0
    /// The last two delays armed, in nanoseconds: a timer mostly alternates
    /// between one or two, and converting a Duration is 128-bit arithmetic.
    private var recent: (Duration, UInt64, Duration, UInt64) = (.zero, 0, .zero, 0)

    /// The loop whose base the event belongs to: it must outlive the event.
    private let loop: EventLoop
    private let precise: Bool

    public convenience init(loop: EventLoop, action: @escaping () -> Void) {
        self.init(loop: loop)
        self.action = action
    }

    /// A timer that does nothing when it fires until `setAction`.
    public init(loop: EventLoop) {
        self.action = {}
        self.loop = loop
        self.precise = loop.preciseTimers
        self.event = nil
        self.event = CLibevent_evtimer_new(loop.base, { _, _, arg in
            // The action may drop the last reference to its timer (a timer
            // kept only until it fires): keep it alive until the action
            // returns; libevent allows freeing a fired event in its callback.
            let timer = Unmanaged<Timer>.fromOpaque(arg!).takeUnretainedValue()
            withExtendedLifetime(timer) { timer.fired() }
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    deinit {
        if let event { event_free(event) }
    }

    public func setAction(_ action: @escaping () -> Void) {
        self.action = action
    }

    /// (Re)arms the timer to fire once after `after`.
    public func schedule(after: Duration) {
        let delay = nanoseconds(after)
        let now = self.now()
        deadline = now &+ delay
        armed = true
        // A pending event that fires no later than the deadline will do: it
        // re-adds itself for the rest.
        if eventFires != 0 && eventFires <= deadline { return }
        add(delay)
        eventFires = deadline
    }

    public func cancel() {
        armed = false
    }

    public var isScheduled: Bool { armed }

    private func fired() {
        eventFires = 0
        guard armed else { return }
        let now = self.now()
        if now < deadline {
            add(deadline - now)
            eventFires = deadline
            return
        }
        armed = false
        action()
    }

    @inline(__always)
    private func now() -> UInt64 { precise ? monotonicNanos() : coarseMonotonicNanos() }

    private func add(_ nanos: UInt64) {
        var tv = timeval(tv_sec: Int(nanos / 1_000_000_000), tv_usec: Int(nanos % 1_000_000_000 / 1000))
        event_add(event, &tv)
    }

    private func nanoseconds(_ d: Duration) -> UInt64 {
        if d == recent.0 { return recent.1 }
        if d == recent.2 { return recent.3 }
        let n = UInt64(max(0, d.nanoseconds))
        recent = (d, n, recent.0, recent.1)
        return n
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
