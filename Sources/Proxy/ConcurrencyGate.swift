public import Loop
import Synchronization

/// Waits for a slot at a gate; granted on its own loop.
public struct GateWaiter: Sendable {
    public let loop: EventLoop
    /// Names the waiter for `withdraw`; 0 when it will never withdraw.
    public let token: UInt64
    public let grant: @Sendable () -> Void

    public init(loop: EventLoop, token: UInt64 = 0, grant: @escaping @Sendable () -> Void) {
        self.loop = loop
        self.token = token
        self.grant = grant
    }
}

public enum GateOutcome: Equatable, Sendable { case acquired, queued, rejected }

/// `max_concurrency` and `max_queued` for one upstream (SPEC §5): slots,
/// a FIFO of waiters for them, and places reserved for jobs being
/// committed. In-process for the SQLite and memory stores
/// (`LocalConcurrencyGate`); a networked store brings one whose slots it
/// shares between replicas.
public protocol ConcurrencyGate: AnyObject, Sendable {
    /// A token for a waiter that may withdraw.
    func makeToken() -> UInt64
    /// Takes a waiter out of the queue; false if it was already granted
    /// (its grant is on its way and must be released as usual).
    @discardableResult func withdraw(_ token: UInt64) -> Bool
    /// Takes a slot now, queues `waiter` for one, or refuses (queue full).
    /// `force` queues beyond `max_queued`: for jobs already accepted.
    func acquire(_ waiter: @autoclosure () -> GateWaiter, force: Bool) -> GateOutcome
    /// Takes a free slot if nobody is waiting for one: `acquire`'s common
    /// case, without building a waiter (the per-request path).
    func tryAcquire() -> Bool
    /// Gives a slot back; the oldest waiter, if any, gets it.
    func release()
    /// Holds a place for a job about to be committed, if there is room.
    func tryReserve() -> Bool
    func unreserve()
    /// New limits from now on (SIGHUP); slots already held stay held.
    func update(limit: Int, maxQueued: Int)
    /// Slots held now.
    var current: Int { get }
    /// Waiters queued now.
    var queued: Int { get }
    var maxConcurrency: Int { get }
    /// The most slots ever held at once.
    var peak: Int { get }
    /// Monotonic nanoseconds since the oldest waiter queued; 0 when none waits.
    var oldestWaitNanos: UInt64 { get }
}

extension ConcurrencyGate {
    public func acquire(_ waiter: @autoclosure () -> GateWaiter) -> GateOutcome {
        acquire(waiter(), force: false)
    }
}

/// The in-process gate, shared by every loop of this process.
///
/// The common case (a free slot, nobody waiting) is one compare-and-swap; the
/// lock is taken only to queue or to hand a freed slot to a waiter. A waiter
/// is granted its slot on its own loop through `EventLoop.execute`.
public final class LocalConcurrencyGate: ConcurrencyGate {
    private let tokens = Atomic<UInt64>(1)

    public func makeToken() -> UInt64 {
        tokens.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// Takes a waiter out of the queue (its request left, its job was
    /// canceled), so it holds no place there. False if it was already
    /// granted: its grant is on its way and must be released as usual.
    @discardableResult
    public func withdraw(_ token: UInt64) -> Bool {
        guard token != 0 else { return false }
        return queue.withLock { q in
            guard q.remove(token: token) else { return false }
            waiting.wrappingSubtract(1, ordering: .sequentiallyConsistent)
            return true
        }
    }

    private let inFlight = Atomic<Int>(0)
    private let waiting = Atomic<Int>(0)
    private let limit: Atomic<Int>
    private let maxQueued: Atomic<Int>
    private let queue = Mutex<WaiterQueue>(WaiterQueue())
    private let highWater = Atomic<Int>(0)
    /// Jobs being committed, counted against the queue before they join it.
    private let reserved = Atomic<Int>(0)

    public init(limit: Int, maxQueued: Int) {
        self.limit = Atomic(max(1, limit))
        self.maxQueued = Atomic(max(0, maxQueued))
    }

    /// New limits apply from now on (SIGHUP); slots already held stay held.
    public func update(limit: Int, maxQueued: Int) {
        self.limit.store(max(1, limit), ordering: .sequentiallyConsistent)
        self.maxQueued.store(max(0, maxQueued), ordering: .sequentiallyConsistent)
        drain()
    }

    public var current: Int { inFlight.load(ordering: .relaxed) }
    public var queued: Int { waiting.load(ordering: .relaxed) }
    /// Holds a place for a job about to be committed, if the upstream has
    /// room for it: in flight, queued and reserved together stay within
    /// `max_concurrency + max_queued`, bursts included. The place is given
    /// back with `unreserve` once the job is committed (and then queued
    /// with `acquire(force:)`) or refused.
    public func tryReserve() -> Bool {
        let capacity = limit.load(ordering: .relaxed) + maxQueued.load(ordering: .relaxed)
        var r = reserved.load(ordering: .sequentiallyConsistent)
        while true {
            let used = inFlight.load(ordering: .sequentiallyConsistent) + waiting.load(ordering: .sequentiallyConsistent) + r
            if used >= capacity { return false }
            let (exchanged, original) = reserved.compareExchange(
                expected: r, desired: r + 1, ordering: .sequentiallyConsistent)
            if exchanged { return true }
            r = original
        }
    }

    public func unreserve() {
        reserved.wrappingSubtract(1, ordering: .sequentiallyConsistent)
    }
    public var maxConcurrency: Int { limit.load(ordering: .relaxed) }
    /// The most slots ever held at once.
    public var peak: Int { highWater.load(ordering: .relaxed) }

    public var oldestWaitNanos: UInt64 {
        guard waiting.load(ordering: .relaxed) > 0 else { return 0 }
        let since = queue.withLock { $0.oldestQueuedAt }
        guard let since else { return 0 }
        let now = monotonicNanos()
        return now > since ? now - since : 0
    }

    /// Takes a slot now, queues `waiter` for one, or refuses (queue full).
    /// `force` queues beyond `max_queued`: for jobs already accepted, which
    /// must never be dropped.
    public func tryAcquire() -> Bool {
        waiting.load(ordering: .sequentiallyConsistent) == 0 && tryIncrement()
    }

    public func acquire(_ waiter: @autoclosure () -> GateWaiter, force: Bool) -> GateOutcome {
        if tryAcquire() { return .acquired }
        var granted: [GateWaiter] = []
        let outcome: GateOutcome = queue.withLock { q in
            if q.isEmpty && tryIncrement() { return .acquired }
            if !force && q.count >= maxQueued.load(ordering: .relaxed) { return .rejected }
            q.append(waiter())
            waiting.wrappingAdd(1, ordering: .sequentiallyConsistent)
            // A release may have run between our failed increment and the
            // enqueue; it saw no waiter, so take the freed slot here.
            grantWhilePossible(&q, into: &granted)
            return .queued
        }
        for w in granted { w.loop.execute(w.grant) }
        return outcome
    }

    /// Gives a slot back; the oldest waiter, if any, gets it.
    public func release() {
        inFlight.wrappingSubtract(1, ordering: .sequentiallyConsistent)
        if waiting.load(ordering: .sequentiallyConsistent) > 0 {
            drain()
        }
    }

    private func drain() {
        var granted: [GateWaiter] = []
        queue.withLock { q in grantWhilePossible(&q, into: &granted) }
        for w in granted { w.loop.execute(w.grant) }
    }

    private func grantWhilePossible(_ q: inout WaiterQueue, into granted: inout [GateWaiter]) {
        while !q.isEmpty && tryIncrement() {
            granted.append(q.removeFirst())
            waiting.wrappingSubtract(1, ordering: .sequentiallyConsistent)
        }
    }

    private func tryIncrement() -> Bool {
        var current = inFlight.load(ordering: .sequentiallyConsistent)
        let max = limit.load(ordering: .relaxed)
        while current < max {
            let (exchanged, original) = inFlight.compareExchange(
                expected: current, desired: current + 1, ordering: .sequentiallyConsistent)
            if exchanged {
                if current + 1 > highWater.load(ordering: .relaxed) {
                    highWater.store(current + 1, ordering: .relaxed)
                }
                return true
            }
            current = original
        }
        return false
    }
}

/// FIFO of waiters: an array with a moving head, compacted as it drains.
/// Each waiter is kept with the monotonic time it joined.
struct WaiterQueue {
    private var items: [(waiter: GateWaiter, at: UInt64)] = []
    private var head = 0

    var isEmpty: Bool { head == items.count }
    var count: Int { items.count - head }
    var oldestQueuedAt: UInt64? { isEmpty ? nil : items[head].at }

    mutating func append(_ w: GateWaiter) { items.append((w, monotonicNanos())) }

    /// Removes the waiter with `token` (a linear scan: withdrawals are rare).
    mutating func remove(token: UInt64) -> Bool {
        guard let i = items[head...].firstIndex(where: { $0.waiter.token == token }) else { return false }
        items.remove(at: i)
        return true
    }

    mutating func removeFirst() -> GateWaiter {
        let w = items[head].waiter
        head += 1
        if head > 64 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return w
    }
}
