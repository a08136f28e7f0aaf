import Config
import Loop
import Store

/// How one webhook delivery attempt ended (SPEC §4, webhooks).
enum AttemptResult: Equatable, Sendable {
    /// The receiver answered with this status (and `Retry-After`, seconds).
    case answered(status: Int, retryAfter: Int?)
    /// No whole answer within `callback.timeout`.
    case timedOut
    case connectFailed
    case tlsFailed
    /// The connection broke before a whole answer.
    case broken
    /// Nothing could be sent: the job, its result or the route's callback
    /// settings are gone.
    case unsendable(String)
}

/// What the outcome of one attempt makes of the delivery, as a pure
/// function: any 2xx is delivered; 410 ends it failed; a 3xx (never
/// followed), any other answer, a timeout or a connection failure is a
/// failed attempt, retried with jittered, doubling delays from `backoff` up
/// to `max_backoff` while `attempts` allows; a 429 or 503 with
/// `Retry-After` waits at least that long (up to an hour).
enum DeliveryRule {
    enum Decision: Equatable {
        case delivered
        case failed(lastError: String)
        case retry(lastError: String, at: Int64)
    }

    static let longestHint: Int64 = 3600

    /// `attempts`: the attempts of this round so far, this one included.
    /// `jitter` in [0, 1): where in the upper half of its delay a retry
    /// lands (drawn only for a retry).
    static func decide(_ result: AttemptResult, attempts: Int, policy: RetryPolicy, now: Int64,
                       jitter: @autoclosure () -> Double) -> Decision {
        var hintMillis: Int64 = 0
        let lastError: String
        switch result {
        case .answered(let status, let retryAfter):
            if (200...299).contains(status) { return .delivered }
            if status == 410 { return .failed(lastError: "http_410") }
            lastError = (300...399).contains(status) ? "redirect" : "http_\(status)"
            if status == 429 || status == 503, let retryAfter {
                hintMillis = min(Int64(retryAfter), longestHint) * 1000
            }
        case .timedOut: lastError = "timeout"
        case .connectFailed: lastError = "connect_failed"
        case .tlsFailed: lastError = "tls_failed"
        case .broken: lastError = "connection_broken"
        case .unsendable(let why): return .failed(lastError: why)
        }
        guard attempts < policy.attempts else { return .failed(lastError: lastError) }
        let full = policy.delay(afterAttempt: attempts).nanoseconds / 1_000_000
        // Equal jitter: half the delay for sure, the other half at random, so
        // receivers that failed together are not retried together.
        let delay = full / 2 + Int64(Double(full - full / 2) * jitter())
        return .retry(lastError: lastError, at: now + max(delay, hintMillis))
    }
}

extension RetryPolicy {
    /// The proxy's own wait after the `n`th failed attempt (1-based):
    /// `backoff`, doubling, at most `max_backoff`.
    func delay(afterAttempt n: Int) -> Duration {
        var delay = backoff
        for _ in 1..<max(1, n) where delay < maxBackoff { delay *= 2 }
        return min(delay, maxBackoff)
    }
}
