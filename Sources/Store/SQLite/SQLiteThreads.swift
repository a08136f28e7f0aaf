import Loop

#if canImport(Glibc)
import Glibc
#endif

/// Starts one of the store's threads (`Loop.startThread`), naming it in the
/// error; the thread is "sqlite" and `short` (or `name`), within Linux's 15 bytes.
func startThread(_ name: String, short: String? = nil, _ body: @escaping () -> Void) throws(StoreError) -> StartedThread {
    do {
        return try Loop.startThread(name: "sqlite \(short ?? name)", body)
    } catch {
        throw StoreError("sqlite: cannot start the \(name) thread: \(error)")
    }
}

/// A wake-up one thread waits for and others give: signals given while
/// nobody waits are kept as one (the waiter then takes all the work there
/// is). Waits may end at a CLOCK_MONOTONIC deadline, which no change of the
/// wall clock moves.
final class Wakeup: @unchecked Sendable {
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    /// Guarded by `mutex`.
    private var given = false

    init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        cond = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(cond)
        cond.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func signal() {
        pthread_mutex_lock(mutex)
        given = true
        pthread_mutex_unlock(mutex)
        pthread_cond_signal(cond)
    }

    /// Returns once a signal was given, or at `deadline` (`monotonicNanos`) if one is set.
    func wait(until deadline: UInt64? = nil) {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        var until = timespec()
        if let deadline {
            until.tv_sec = Int(deadline / 1_000_000_000)
            until.tv_nsec = Int(deadline % 1_000_000_000)
        }
        while !given {
            if deadline == nil {
                pthread_cond_wait(cond, mutex)
            } else if pthread_cond_timedwait(cond, mutex, &until) == ETIMEDOUT {
                return
            }
        }
        given = false
    }
}
