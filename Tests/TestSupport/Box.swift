import Foundation

/// A lock-protected value that closures and threads can share, and that a
/// test can wait on: every `withLock` wakes the waiters, so `wait` returns
/// as soon as the value is what it waits for, with no polling.
public final class Box<T: Sendable>: @unchecked Sendable {
    // `value` is only touched with `condition` locked.
    private let condition = NSCondition()
    private var value: T

    public init(_ v: T) { value = v }

    @discardableResult
    public func withLock<R>(_ body: (inout T) throws -> R) rethrows -> R {
        condition.lock()
        defer {
            condition.broadcast()
            condition.unlock()
        }
        return try body(&value)
    }

    /// Blocks until `predicate` holds for the value (checked now and after
    /// every change) or `timeout` seconds pass; whether it held.
    public func wait(timeout: Double, until predicate: (T) -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        while !predicate(value) {
            if !condition.wait(until: deadline) { return predicate(value) }
        }
        return true
    }
}
