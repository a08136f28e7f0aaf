/// A job's status as SPEC §4 names it.
public enum JobStatus: String, Sendable, CaseIterable {
    /// Committed, waiting for an upstream slot (or for a retry's backoff).
    case queued
    /// Its request is being exchanged with the upstream.
    case running
    /// The upstream returned a whole response, whatever its status.
    case completed
    /// No whole response could be had.
    case failed
    /// Canceled by DELETE before it ended.
    case canceled

    public var isTerminal: Bool {
        switch self {
        case .completed, .failed, .canceled: return true
        case .queued, .running: return false
        }
    }

    /// Its place in `allCases` (and in `MeterLabels.jobStatuses`).
    public var ordinal: Int {
        switch self {
        case .queued: return 0
        case .running: return 1
        case .completed: return 2
        case .failed: return 3
        case .canceled: return 4
        }
    }
}

/// Why a job failed (SPEC §4 error codes).
public enum JobErrorCode: String, Sendable, CaseIterable {
    case upstreamUnreachable = "upstream_unreachable"
    case upstreamTimeout = "upstream_timeout"
    case upstreamReset = "upstream_reset"
    case upstreamBadResponse = "upstream_bad_response"
    case responseTooLarge = "response_too_large"
    case interrupted

    /// The result endpoint's status for a job failed this way.
    public var resultStatus: Int { self == .upstreamTimeout ? 504 : 502 }
}

/// What can happen to a job; `JobStateMachine` says where each leads.
public enum JobEvent: Sendable, Equatable {
    /// A slot was granted and the request is being sent (attempt n).
    case dispatched
    /// The whole response arrived.
    case responded
    /// The attempt failed; `retry` says whether another attempt follows.
    case attemptFailed(JobErrorCode, retry: Bool)
    /// DELETE on a pending job.
    case cancel
    /// The process restarted while the job was running; `resend` is true
    /// when its method is idempotent or it carried an Idempotency-Key.
    case recovered(resend: Bool)
}

/// The job lifecycle of SPEC §4-§5 as a pure function, so every transition
/// is testable without sockets or stores.
///
///     queued  --dispatched--> running --responded--> completed
///     queued  --cancel------> canceled
///     running --cancel------> canceled        (the exchange is aborted)
///     running --attemptFailed(retry)--> queued (backoff, then dispatched)
///     running --attemptFailed(final)--> failed
///     running --recovered(resend)-----> queued
///     running --recovered(no resend)--> failed (interrupted)
///
/// Terminal states accept nothing: a late event for a finished job is a
/// no-op the caller must not store.
public enum JobStateMachine {
    public enum Outcome: Equatable, Sendable {
        case moved(to: JobStatus, error: JobErrorCode?)
        case rejected
    }

    public static func apply(_ event: JobEvent, to status: JobStatus) -> Outcome {
        switch (status, event) {
        case (.queued, .dispatched):
            return .moved(to: .running, error: nil)
        case (.queued, .cancel), (.running, .cancel):
            return .moved(to: .canceled, error: nil)
        case (.running, .responded):
            return .moved(to: .completed, error: nil)
        case (.running, .attemptFailed(_, retry: true)):
            return .moved(to: .queued, error: nil)
        case (.running, .attemptFailed(let code, retry: false)):
            return .moved(to: .failed, error: code)
        case (.running, .recovered(resend: true)):
            return .moved(to: .queued, error: nil)
        case (.running, .recovered(resend: false)):
            return .moved(to: .failed, error: .interrupted)
        default:
            return .rejected
        }
    }
}
