/// A job's webhook (SPEC §4): where it goes and how its delivery stands.
/// Kept in the job's record and written with it, so the commit that makes a
/// job terminal also makes its delivery due: a crash between the two cannot
/// lose it.
///
/// A class, so a record without a callback costs one pointer; immutable,
/// so records stay values: a change is a new instance (`with`).
public final class JobCallback: Sendable, Equatable, CustomStringConvertible {
    public enum Status: String, Sendable {
        /// The job has not ended yet.
        case waiting
        /// Due at `nextAttemptAt`, or being attempted.
        case pending
        case delivered
        /// Attempts ran out, the receiver answered 410, or the job was canceled.
        case failed

        /// The status JSON's word: a callback whose job runs is `pending` too.
        public var json: String { self == .waiting ? "pending" : rawValue }
    }

    public let url: String
    public let status: Status
    /// Attempts in the current round.
    public let attempts: Int
    /// 1, then one more for each re-arm (`POST {jobs.path}/{id}/callback`).
    public let round: Int
    /// The last attempt's failure: `http_500`, `timeout`, `connect_failed`, ...
    public let lastError: String?
    /// Unix milliseconds; pending only.
    public let nextAttemptAt: Int64?

    public init(url: String, status: Status = .waiting, attempts: Int = 0, round: Int = 1,
                lastError: String? = nil, nextAttemptAt: Int64? = nil) {
        self.url = url
        self.status = status
        self.attempts = attempts
        self.round = round
        self.lastError = lastError
        self.nextAttemptAt = status == .pending ? nextAttemptAt : nil
    }

    /// This callback with some fields changed.
    public func with(status: Status? = nil, attempts: Int? = nil, round: Int? = nil,
                     lastError: String?? = .none, nextAttemptAt: Int64?? = .none) -> JobCallback {
        JobCallback(url: url, status: status ?? self.status, attempts: attempts ?? self.attempts,
                    round: round ?? self.round, lastError: lastError ?? self.lastError,
                    nextAttemptAt: nextAttemptAt ?? self.nextAttemptAt)
    }

    /// Due now or later: the job ended and the round has attempts left.
    public var isPending: Bool { status == .pending }

    public static func == (a: JobCallback, b: JobCallback) -> Bool {
        a.url == b.url && a.status == b.status && a.attempts == b.attempts && a.round == b.round
            && a.lastError == b.lastError && a.nextAttemptAt == b.nextAttemptAt
    }

    public var description: String {
        "callback(\(url), \(status), attempts \(attempts), round \(round), error \(lastError ?? "-"), next \(nextAttemptAt.map(String.init) ?? "-"))"
    }
}
