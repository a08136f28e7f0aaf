import Proxy

/// The decisions of a request on an `async` or `auto` route (SPEC §3),
/// from its body to its answer, as a value: events in, actions out.
/// `JobIntake` owns the sockets, timers and the store calls and performs
/// the actions; this type owns the races between them.
///
///     body --accept--------------> committing(accepted) --committed--> done / waitingForResult
///     body --forward(acquired)---> exchanging --exchangeEnded--> done (answered directly, no job)
///     body --forward(queued)-----> waitingForSlot --slotGranted--> exchanging
///     waitingForSlot --deadline--> committing(queuedAtGate)
///     exchanging     --deadline--> committing(running)
///     committing --committed-----> done (202)         --commitFailed--> done (503) or exchanging
///
/// While the job is being committed, what else happens is noted in the
/// commit and decided when the store answers: a slot granted, the exchange
/// ending, the client leaving.
struct IntakeMachine<Outcome> {
    enum State {
        /// The request body is arriving.
        case body
        /// auto: queued at the upstream's gate. `claim`: an Idempotency-Key
        /// claim is held for the job this may become.
        case waitingForSlot(claim: Bool)
        /// auto: the exchange runs; a response before the deadline is
        /// answered directly and no job exists.
        case exchanging(claim: Bool)
        /// The job's insert is being made durable.
        case committing(Commit)
        /// async with `Prefer: wait`: the job is dispatched; its end (or the
        /// wait) is awaited.
        case waitingForResult
        /// Answered, refused or abandoned; `after` says what may still come.
        case done(After)
    }

    /// What was under way when the commit began, and what happened since.
    struct Commit {
        enum Source {
            /// async: accepted at once, a place at the gate reserved for it;
            /// `wait`: with `Prefer: wait=N`.
            case accepted(wait: Bool)
            /// auto, switched while queued at the gate (its place is the job's).
            case queuedAtGate
            /// auto, switched while its exchange runs (the exchange is the job's).
            case running
        }
        var source: Source
        var slotGranted = false
        /// How the exchange ended, if it did meanwhile.
        var outcome: Outcome?
        var clientGone = false
    }

    /// What may still arrive once the request is done.
    enum After {
        case nothing
        /// Committed while queued: the gate's grant is the job's.
        case grantForJob
        /// Left while queued (or its queued job was refused): a grant that
        /// was already on its way must be given back.
        case grantToRelease
        /// The exchange runs on as the job's: its end is the job's.
        case exchangeForJob
    }

    enum Event {
        /// async (or `Prefer: respond-async`): `reserved` when the gate had
        /// room for one more job; `wait` for `Prefer: wait=N`; `claim` when
        /// an Idempotency-Key was claimed (the job's insert takes it over).
        case accept(reserved: Bool, wait: Bool, claim: Bool)
        /// auto: forwarded, with the gate's answer; `claim` when an
        /// Idempotency-Key was claimed.
        case forward(GateOutcome, claim: Bool)
        /// Answered at body end (an existing job, a refused key, a spool error).
        case answeredEarly
        case slotGranted
        case exchangeEnded(Outcome)
        /// `async_after` (or the `Prefer: wait`) passed.
        case deadline
        case committed
        case commitFailed
        case resultReady
        case clientClosed
    }

    /// What a committed job does next (and its 202 is sent, except `dispatchAndWait`).
    enum JobStart {
        /// The running exchange continues as the job's.
        case adoptExchange
        /// The exchange ended during the commit: its outcome is the job's.
        case finishWithOutcome(Outcome)
        /// A slot was granted during the commit: the job runs now.
        case runWithGrantedSlot
        /// Still queued at the gate: the grant, when it comes, is the job's.
        case waitInQueue
        /// Queue the job for a slot (its reserved place is given back as it joins).
        case dispatch
        /// As `dispatch`, then hold the request for the result (no 202 yet).
        case dispatchAndWait
    }

    enum Action {
        case none
        /// Commit the job as queued (its request waits for a slot).
        case commitQueued
        /// Commit the job as running (its exchange is under way).
        case commitRunning
        /// Start the exchange (a slot is held).
        case startExchange
        /// The exchange ended before the deadline: answer with its outcome;
        /// release the key claim if `claim`.
        case answerDirectly(Outcome, claim: Bool)
        /// The commit succeeded.
        case jobCommitted(JobStart, unreserve: Bool)
        /// The commit failed: 503; give back what is held.
        case refuseUnstored(unreserve: Bool, withdraw: Bool, releaseSlot: Bool)
        /// The gate refused (queue full): 503.
        case refuseQueueFull(claim: Bool)
        /// Give a late grant back.
        case releaseSlot
        /// The job, committed while queued, got its slot.
        case runQueuedJob
        /// The exchange that became the job's ended.
        case finishJob(Outcome)
        /// The client left before a job existed: drop the request, the
        /// queue place (`withdraw`), the exchange (`abortExchange`), the claim.
        case abandon(withdraw: Bool, abortExchange: Bool, claim: Bool)
        /// The commit failed after the client left: drop the exchange.
        case abortExchange
        /// Answer with the job's state now (its result, or 202).
        case answerResult
        /// The client of a waiting request left.
        case stopWaiting
    }

    private(set) var state = State.body

    var isDone: Bool {
        if case .done = state { return true }
        return false
    }

    var isReceivingBody: Bool {
        if case .body = state { return true }
        return false
    }

    mutating func handle(_ event: Event) -> Action {
        switch (state, event) {
        case (.body, .accept(let reserved, let wait, let claim)):
            guard reserved else {
                state = .done(.nothing)
                return .refuseQueueFull(claim: claim)
            }
            state = .committing(Commit(source: .accepted(wait: wait)))
            return .commitQueued
        case (.body, .forward(.acquired, let claim)):
            state = .exchanging(claim: claim)
            return .startExchange
        case (.body, .forward(.queued, let claim)):
            state = .waitingForSlot(claim: claim)
            return .none
        case (.body, .forward(.rejected, let claim)):
            state = .done(.nothing)
            return .refuseQueueFull(claim: claim)
        case (.body, .answeredEarly):
            state = .done(.nothing)
            return .none
        case (.body, .clientClosed):
            state = .done(.nothing)
            return .abandon(withdraw: false, abortExchange: false, claim: false)

        case (.waitingForSlot(let claim), .slotGranted):
            state = .exchanging(claim: claim)
            return .startExchange
        case (.waitingForSlot, .deadline):
            state = .committing(Commit(source: .queuedAtGate))
            return .commitQueued
        case (.waitingForSlot(let claim), .clientClosed):
            state = .done(.grantToRelease)
            return .abandon(withdraw: true, abortExchange: false, claim: claim)

        case (.exchanging(let claim), .exchangeEnded(let outcome)):
            state = .done(.nothing)
            return .answerDirectly(outcome, claim: claim)
        case (.exchanging, .deadline):
            state = .committing(Commit(source: .running))
            return .commitRunning
        case (.exchanging(let claim), .clientClosed):
            state = .done(.nothing)
            return .abandon(withdraw: false, abortExchange: true, claim: claim)

        case (.committing(var c), .slotGranted) where c.source == .queuedAtGate && !c.slotGranted:
            c.slotGranted = true
            state = .committing(c)
            return .none
        case (.committing(var c), .exchangeEnded(let outcome)) where c.source == .running && c.outcome == nil:
            c.outcome = outcome
            state = .committing(c)
            return .none
        case (.committing(var c), .clientClosed) where !c.clientGone:
            // The 202 may find no one to read it; the job stands.
            c.clientGone = true
            state = .committing(c)
            return .none
        case (.committing(let c), .committed):
            return committed(c)
        case (.committing(let c), .commitFailed):
            return commitFailed(c)

        case (.waitingForResult, .resultReady), (.waitingForResult, .deadline):
            state = .done(.nothing)
            return .answerResult
        case (.waitingForResult, .clientClosed):
            state = .done(.nothing)
            return .stopWaiting

        case (.done(.grantForJob), .slotGranted):
            state = .done(.nothing)
            return .runQueuedJob
        case (.done(.exchangeForJob), .exchangeEnded(let outcome)):
            state = .done(.nothing)
            return .finishJob(outcome)
        case (_, .slotGranted):
            // Not waiting for one (any more): give it back.
            if case .done(.grantToRelease) = state { state = .done(.nothing) }
            return .releaseSlot

        default:
            return .none
        }
    }

    private mutating func committed(_ c: Commit) -> Action {
        switch c.source {
        case .accepted(let wait):
            if wait && !c.clientGone {
                state = .waitingForResult
                return .jobCommitted(.dispatchAndWait, unreserve: true)
            }
            state = .done(.nothing)
            return .jobCommitted(.dispatch, unreserve: true)
        case .queuedAtGate:
            if c.slotGranted {
                state = .done(.nothing)
                return .jobCommitted(.runWithGrantedSlot, unreserve: false)
            }
            state = .done(.grantForJob)
            return .jobCommitted(.waitInQueue, unreserve: false)
        case .running:
            if let outcome = c.outcome {
                state = .done(.nothing)
                return .jobCommitted(.finishWithOutcome(outcome), unreserve: false)
            }
            state = .done(.exchangeForJob)
            return .jobCommitted(.adoptExchange, unreserve: false)
        }
    }

    private mutating func commitFailed(_ c: Commit) -> Action {
        switch c.source {
        case .accepted:
            state = .done(.nothing)
            return .refuseUnstored(unreserve: true, withdraw: false, releaseSlot: false)
        case .queuedAtGate:
            if c.slotGranted {
                state = .done(.nothing)
                return .refuseUnstored(unreserve: false, withdraw: false, releaseSlot: true)
            }
            state = .done(.grantToRelease)
            return .refuseUnstored(unreserve: false, withdraw: true, releaseSlot: false)
        case .running:
            // The request already reached the upstream: no job, but no
            // retry invitation either; the exchange ends as in sync.
            if let outcome = c.outcome {
                state = .done(.nothing)
                return .answerDirectly(outcome, claim: false)
            }
            if c.clientGone {
                state = .done(.nothing)
                return .abortExchange
            }
            state = .exchanging(claim: false)
            return .none
        }
    }
}

extension IntakeMachine.Commit.Source: Equatable {}
extension IntakeMachine.After: Equatable {}
extension IntakeMachine.Commit: Equatable where Outcome: Equatable {}
extension IntakeMachine.State: Equatable where Outcome: Equatable {}
extension IntakeMachine.Event: Equatable where Outcome: Equatable {}
extension IntakeMachine.JobStart: Equatable where Outcome: Equatable {}
extension IntakeMachine.Action: Equatable where Outcome: Equatable {}
