import Foundation

public struct TestError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Polls `condition` every 5 ms until it holds or `timeout` seconds pass.
/// Only for state nothing signals: the product's (a job's status, the demo
/// backend's counters, a file the store writes). What the harness itself
/// sees (the fake upstream, a child's output, a test's own callbacks) is
/// waited on through a `Box` instead.
@discardableResult
public func waitUntil(timeout: Double, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if condition() { return true }
        if Date() >= deadline { return false }
        Thread.sleep(forTimeInterval: 0.005)
    }
}

/// Seconds elapsed since `start` on the monotonic clock.
public func secondsSince(_ start: ContinuousClock.Instant) -> Double {
    let d = ContinuousClock.now - start
    return Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
}

/// Runs `body(i)` on `n` real threads at once (not the 2-core cooperative
/// pool, which would serialize blocking calls by itself) and waits for all
/// of them; each result, nil for a thread that did not finish in time.
public func onThreads<T: Sendable>(_ n: Int, timeout: Double = 20, _ body: @escaping @Sendable (Int) -> T) throws -> [T?] {
    let results = Box<(values: [T?], finished: Int)>((Array(repeating: nil, count: n), 0))
    for i in 0..<n {
        Thread.detachNewThread {
            let v = body(i)
            results.withLock {
                $0.values[i] = v
                $0.finished += 1
            }
        }
    }
    guard results.wait(timeout: timeout, until: { $0.finished == n }) else {
        throw TestError("threads did not finish in \(timeout)s")
    }
    return results.withLock { $0.values }
}

/// The outcome of a background thread: nil for success, else a message.
public final class ThreadResult: Sendable {
    private let state = Box<(done: Bool, error: String?)>((false, nil))

    public init() {}

    public func finish(_ error: String?) {
        state.withLock { $0 = (true, error) }
    }

    /// The error, or nil on success; a message if the thread is still running.
    public func wait(timeout: Double) -> String? {
        guard state.wait(timeout: timeout, until: { $0.done }) else { return "writer still running after \(timeout)s" }
        return state.withLock { $0.error }
    }
}
