import CLibevent
import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A thread that owns one `event_base`.
///
/// Everything that touches the base (sockets, timers, listeners) is created
/// and used on this thread only, so libevent runs without its own locks.
/// Other threads hand work over with `execute`: a closure queued under a
/// mutex and, when the queue was empty, one write to an eventfd the loop
/// watches (memcached's queue + wake-up). The per-request path never takes
/// that mutex. A thread that hands over many closures at once (the store's
/// writer, after a group commit) wraps them in `deferringWakeups`, so each
/// loop is woken once for the lot instead of racing to drain them one by one.
public final class EventLoop: @unchecked Sendable {
    /// The `event_base` this loop owns; valid until `deinit`.
    public let base: OpaquePointer
    public let index: Int
    /// Timers on the precise monotonic clock (see `init`).
    public let preciseTimers: Bool

    private let wakeFD: Int32
    private var wakeEvent: OpaquePointer!
    private let pending = Mutex<[@Sendable () -> Void]>([])
    private let threadID = Atomic<UInt>(0)
    private let stopped = Atomic<Bool>(false)

    /// `preciseTimers`: timers on `CLOCK_MONOTONIC` (and a timerfd) instead
    /// of libevent's default `CLOCK_MONOTONIC_COARSE`, whose resolution is
    /// the kernel tick (4 ms at HZ=250), so a 100 ms timer fires 100-104 ms
    /// later. The proxy's timers are timeouts, where a tick does not matter
    /// and a timerfd update per loop turn would; the demo backend's sleeps
    /// are the answer itself.
    public init(index: Int = 0, preciseTimers: Bool = false) {
        let config = event_config_new()!
        // Enable/disable pairs within one loop turn cost no epoll_ctl at all.
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST.rawValue))
        // One thread per base: libevent needs no locks of its own.
        event_config_set_flag(config, Int32(EVENT_BASE_FLAG_NOLOCK.rawValue))
        if preciseTimers { event_config_set_flag(config, Int32(EVENT_BASE_FLAG_PRECISE_TIMER.rawValue)) }
        guard let base = event_base_new_with_config(config) else {
            fatalError("event_base_new_with_config failed")
        }
        event_config_free(config)
        self.base = base
        self.index = index
        self.preciseTimers = preciseTimers
        self.wakeFD = eventfd(0, Int32(EFD_NONBLOCK) | Int32(EFD_CLOEXEC))
        precondition(wakeFD >= 0, "eventfd failed")
        wakeEvent = event_new(base, wakeFD, Int16(EV_READ | EV_PERSIST), { fd, _, arg in
            var counter: UInt64 = 0
            _ = read(fd, &counter, 8)
            Unmanaged<EventLoop>.fromOpaque(arg!).takeUnretainedValue().runPending()
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(wakeEvent, nil)
    }

    deinit {
        event_free(wakeEvent)
        close(wakeFD)
        event_base_free(base)
    }

    /// True when called on this loop's thread.
    public var inEventLoop: Bool {
        threadID.load(ordering: .acquiring) == UInt(bitPattern: Int(bitPattern: pthread_self()))
    }

    public func preconditionInEventLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(inEventLoop, "not on event loop \(index)", file: file, line: line)
    }

    /// Runs `work` on this loop's thread, soon; safe from any thread.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        let wasEmpty = pending.withLock { queue in
            queue.append(work)
            return queue.count == 1
        }
        if wasEmpty {
            if let deferred = pthread_getspecific(deferredWakeupsKey) {
                Unmanaged<DeferredWakeups>.fromOpaque(deferred).takeUnretainedValue().add(self)
            } else {
                wake()
            }
        }
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// Runs `body`, holding back the wake-ups its `execute` calls (on any
    /// loop) would make until it returns; then each loop that got work is
    /// woken once. The closures still run in the order they were queued.
    /// Nested calls join the outermost one. Work other threads queue on
    /// those loops meanwhile waits for the same wake-up, so keep `body`
    /// short, and never wait in it for work it handed over.
    public static func deferringWakeups<R>(_ body: () throws -> R) rethrows -> R {
        if pthread_getspecific(deferredWakeupsKey) != nil { return try body() }
        let deferred = DeferredWakeups()
        pthread_setspecific(deferredWakeupsKey, Unmanaged.passUnretained(deferred).toOpaque())
        defer {
            pthread_setspecific(deferredWakeupsKey, nil)
            for loop in deferred.loops { loop.wake() }
            withExtendedLifetime(deferred) {}
        }
        return try body()
    }

    private func runPending() {
        let work = pending.withLock { queue in
            let taken = queue
            queue.removeAll(keepingCapacity: true)
            return taken
        }
        for item in work {
            item()
        }
    }

    /// Runs the loop on the calling thread until `stop()`.
    public func run() {
        threadID.store(UInt(bitPattern: Int(bitPattern: pthread_self())), ordering: .releasing)
        while !stopped.load(ordering: .acquiring) {
            event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY)
        }
        runPending()
    }

    /// Makes `run()` return once the current callbacks finish; safe from any thread.
    public func stop() {
        execute { [self] in
            stopped.store(true, ordering: .releasing)
            event_base_loopbreak(base)
        }
    }
}

/// A group of loops, each on its own thread; loop 0 may run on the caller.
public final class EventLoopGroup: Sendable {
    public let loops: [EventLoop]
    private let threads = Mutex<[StartedThread]>([])

    /// The threads' name: `name` and the loop's index.
    private let name: String

    public init(count: Int, name: String = "loop", preciseTimers: Bool = false) {
        precondition(count >= 1)
        loops = (0..<count).map { EventLoop(index: $0, preciseTimers: preciseTimers) }
        self.name = name
    }

    public init(loops: [EventLoop], name: String = "loop") {
        precondition(!loops.isEmpty)
        self.loops = loops
        self.name = name
    }

    /// Waits for the loop threads to end (after `stop()` from elsewhere).
    public func join() {
        let started = threads.withLock { $0 }
        for thread in started { thread.join() }
    }

    /// Starts loops `first...` on new threads.
    public func start(from first: Int = 0) {
        for loop in loops[first...] {
            let thread: StartedThread
            do {
                thread = try startThread(name: "\(name) \(loop.index)") { loop.run() }
            } catch {
                preconditionFailure("cannot start an event loop thread: \(error)")
            }
            threads.withLock { $0.append(thread) }
        }
    }

    /// Stops every loop and joins the threads this group started.
    public func shutdown() {
        for loop in loops { loop.stop() }
        let started = threads.withLock { t -> [StartedThread] in
            let all = t
            t.removeAll()
            return all
        }
        for thread in started { thread.join() }
    }

    public static var coreCount: Int {
        max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }
}

/// The loops a `deferringWakeups` scope owes a wake-up; used by one thread.
private final class DeferredWakeups {
    var loops: [EventLoop] = []

    func add(_ loop: EventLoop) {
        if !loops.contains(where: { $0 === loop }) { loops.append(loop) }
    }
}

/// The calling thread's `DeferredWakeups`, if it is inside a scope.
private let deferredWakeupsKey: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key, nil)
    precondition(rc == 0, "pthread_key_create failed: \(rc)")
    return key
}()

extension EventLoop {
    /// Runs `work` on this loop and waits for its result. For setup and
    /// tests only: never call it from another loop's callbacks.
    public func submitAndWait<T: Sendable>(_ work: @escaping @Sendable () throws -> T) throws -> T {
        if inEventLoop { return try work() }
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<Result<T, any Error>?>(nil)
        execute {
            let r = Result { try work() }
            result.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }
}
