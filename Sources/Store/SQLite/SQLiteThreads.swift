import Loop

#if canImport(Glibc)
import Glibc
#endif

/// Starts one of the store's threads (`Loop.startThread`), naming it in the error.
func startThread(_ name: String, _ body: @escaping () -> Void) throws(StoreError) -> StartedThread {
    do {
        return try Loop.startThread(body)
    } catch {
        throw StoreError("sqlite: cannot start the \(name) thread: \(error)")
    }
}

/// A counting semaphore for the threads' wake-ups.
final class Semaphore: @unchecked Sendable {
    private let sem: UnsafeMutablePointer<sem_t>

    init() {
        sem = .allocate(capacity: 1)
        sem_init(sem, 0, 0)
    }

    deinit {
        sem_destroy(sem)
        sem.deallocate()
    }

    func signal() { sem_post(sem) }

    func wait() {
        while sem_wait(sem) != 0 && errno == EINTR {}
    }
}
