#if canImport(Glibc)
import Glibc
#endif

/// What a new thread runs, carried through pthread_create's context pointer.
private final class ThreadStart {
    let body: () -> Void
    init(_ body: @escaping () -> Void) { self.body = body }
}

/// Runs `body` on a new thread; the thread holds what `body` captures
/// until it returns.
func startThread(_ name: String, _ body: @escaping () -> Void) throws(StoreError) -> pthread_t {
    let box = Unmanaged.passRetained(ThreadStart(body)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        Unmanaged<ThreadStart>.fromOpaque(arg!).takeRetainedValue().body()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<ThreadStart>.fromOpaque(box).release()
        throw StoreError("sqlite: cannot start the \(name) thread: \(String(cString: strerror(rc)))")
    }
    return thread
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
