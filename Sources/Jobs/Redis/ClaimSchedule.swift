/// When one replica asks Redis for an upstream's next job (SPEC §5b), as a
/// value: events in, the action to take out; the dispatcher that owns the
/// connection performs it. Socket-free, so every transition is unit-tested.
///
/// At most one claim is in flight per upstream and replica. A wake-up
/// (a job queued anywhere, a slot freed here, the periodic poll that
/// catches missed messages and lapsed leases) during a claim is not lost:
/// the claim is asked again when the answer comes. A claim that found a
/// job asks again at once (there may be more, and slots); one that found
/// none rests until the next wake-up; one that failed (Redis unreachable)
/// waits out a backoff, doubling to `maxBackoff`.
struct ClaimSchedule: Equatable {
    enum Phase: Equatable {
        /// Nothing in flight; the next wake-up claims.
        case resting
        /// A claim is in flight; `again`: a wake-up came meanwhile.
        case claiming(again: Bool)
        /// Redis failed the last claim: wake-ups wait for the backoff.
        case backingOff
    }

    enum Event: Equatable {
        case wake
        case claimed(found: Bool)
        case failed
        /// The backoff timer fired.
        case backoffEnded
    }

    enum Action: Equatable {
        case none
        case claim
        case armBackoff(Duration)
    }

    private(set) var phase: Phase = .resting
    private(set) var backoff: Duration
    let firstBackoff: Duration
    let maxBackoff: Duration

    init(firstBackoff: Duration = .milliseconds(100), maxBackoff: Duration = .seconds(2)) {
        self.firstBackoff = firstBackoff
        self.maxBackoff = maxBackoff
        backoff = firstBackoff
    }

    mutating func handle(_ event: Event) -> Action {
        switch (phase, event) {
        case (.resting, .wake):
            phase = .claiming(again: false)
            return .claim
        case (.claiming, .wake):
            phase = .claiming(again: true)
            return .none
        case (.claiming, .claimed(found: true)), (.claiming(again: true), .claimed(found: false)):
            backoff = firstBackoff
            phase = .claiming(again: false)
            return .claim
        case (.claiming(again: false), .claimed(found: false)):
            backoff = firstBackoff
            phase = .resting
            return .none
        case (.claiming, .failed):
            phase = .backingOff
            let wait = backoff
            backoff = min(backoff * 2, maxBackoff)
            return .armBackoff(wait)
        case (.backingOff, .backoffEnded):
            phase = .claiming(again: false)
            return .claim
        case (.backingOff, .wake):
            return .none
        case (.resting, .claimed), (.resting, .failed), (.resting, .backoffEnded),
             (.claiming, .backoffEnded), (.backingOff, .claimed), (.backingOff, .failed):
            // Answers and timers that belong to no claim in flight: ignored.
            return .none
        }
    }
}
