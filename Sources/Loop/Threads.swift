import CLibevent

#if canImport(Glibc)
import Glibc
#endif

/// Why a thread could not be started: pthread_create's error number.
public struct ThreadStartError: Error, Sendable, CustomStringConvertible {
    public let code: Int32
    public var description: String { String(cString: strerror(code)) }
}

/// What a new thread runs, carried through pthread_create's context pointer.
private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// A thread `startThread` made: joined (or detached) once by its owner.
public struct StartedThread: @unchecked Sendable {
    let raw: pthread_t

    /// Waits for the thread to return.
    public func join() { pthread_join(raw, nil) }

    /// Lets the thread finish on its own (it may be the calling thread).
    public func detach() { pthread_detach(raw) }

    /// True when called on this thread.
    public var isCurrent: Bool { pthread_equal(raw, pthread_self()) != 0 }
}

/// Runs `body` on a new thread (`pthread_create`) named `name` (as `top -H`
/// and `ps -L` show it); the thread holds what `body` captures until it
/// returns. The one way this project starts a thread: event loops, the
/// SQLite writer and checkpointer.
public func startThread(name: String, _ body: @escaping () -> Void) throws(ThreadStartError) -> StartedThread {
    let box = Unmanaged.passRetained(ThreadBody {
        nameCurrentThread(name)
        body()
    }).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { arg in
        Unmanaged<ThreadBody>.fromOpaque(arg!).takeRetainedValue().run()
        return nil
    }, box)
    guard rc == 0 else {
        Unmanaged<ThreadBody>.fromOpaque(box).release()
        throw ThreadStartError(code: rc)
    }
    return StartedThread(raw: thread)
}

/// Names the calling thread, as `top -H` and `ps -L` show it.
public func nameCurrentThread(_ name: String) {
    CLibevent_name_thread(name)
}
