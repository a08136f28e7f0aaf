import CLibevent

#if canImport(Glibc)
import Glibc
#endif

/// Signals delivered as events on one loop (libevent reaches a signal to
/// one `event_base` only: handle them in one place). `handler` runs on the
/// loop with the signal's number.
public final class SignalEvents {
    private var events: [OpaquePointer] = []
    private let handler: (Int32) -> Void
    /// The loop whose base the events belong to: it must outlive them.
    private let loop: EventLoop

    public init(loop: EventLoop, signals: [Int32], handler: @escaping (Int32) -> Void) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.handler = handler
        let ctx = Unmanaged.passUnretained(self).toOpaque()
        for signo in signals {
            let ev = CLibevent_evsignal_new(loop.base, signo, { signo, _, ctx in
                Unmanaged<SignalEvents>.fromOpaque(ctx!).takeUnretainedValue().handler(signo)
            }, ctx)!
            event_add(ev, nil)
            events.append(ev)
        }
    }

    deinit {
        for ev in events { event_free(ev) }
    }
}
