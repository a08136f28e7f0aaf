import Config
import Store

/// When a background job's failed attempt is tried again (SPEC §4,
/// upstream retries), as a pure function of the attempt's outcome.
enum UpstreamRetry {
    /// The longest `Retry-After` honoured; a longer one means no retry: the
    /// response stands.
    static let longestHint: Duration = .seconds(3600)

    /// The wait before another attempt, or nil when `outcome` stands. Only
    /// unreachable upstreams, resets before any response byte, and
    /// 502/503/504 are retried; a request that reached the upstream only if
    /// it is safe to send twice (`resendable`); and only while
    /// `policy.attempts` allows. The proxy's own delays grow from `backoff`,
    /// doubling, up to `max_backoff`; a `Retry-After` on the response wins
    /// when it asks for longer, up to `longestHint`.
    static func delay(after outcome: JobRunner.Outcome, attempts: Int, resendable: Bool,
                      policy: RetryPolicy) -> Duration? {
        guard attempts < policy.attempts else { return nil }
        var hinted: Duration?
        switch outcome {
        case .response(let response, _, let retryAfter):
            guard [502, 503, 504].contains(response.status), resendable else { return nil }
            if let retryAfter {
                guard .seconds(retryAfter) <= longestHint else { return nil }
                hinted = .seconds(retryAfter)
            }
        case .failure(_, _, .unsent):
            break
        case .failure(_, _, .sentNoResponse):
            guard resendable else { return nil }
        case .failure(_, _, .no):
            return nil
        }
        var delay = policy.delay(afterAttempt: attempts)
        if let hinted { delay = max(delay, hinted) }
        return delay
    }
}
