@testable import Jobs
import Proxy
import Testing

/// The async/auto switch (SPEC §3), every transition and the races first,
/// without sockets, stores or clocks: an outcome is an Int here.
@Suite struct IntakeMachineTests {
    typealias M = IntakeMachine<Int>

    static func run(_ events: [M.Event]) -> (M, [M.Action]) {
        var m = M()
        let actions = events.map { m.handle($0) }
        return (m, actions)
    }

    // MARK: The races during the commit

    /// auto: the exchange ends while the switch's commit is in flight. The
    /// job is committed running, so its outcome is the job's.
    @Test func responseDuringCommitBecomesTheJobsOutcome() {
        let (m, actions) = Self.run([.forward(.acquired, claim: true), .deadline, .exchangeEnded(7), .committed])
        #expect(actions == [.startExchange, .commitRunning, .none, .jobCommitted(.finishWithOutcome(7), unreserve: false)])
        #expect(m.state == .done(.nothing))
    }

    /// ... and if that commit fails, the response is answered directly, as
    /// if no switch had been tried (the key claim went with the insert).
    @Test func responseDuringAFailedCommitIsAnsweredDirectly() {
        let (m, actions) = Self.run([.forward(.acquired, claim: true), .deadline, .exchangeEnded(7), .commitFailed])
        #expect(actions.last == .answerDirectly(7, claim: false))
        #expect(m.state == .done(.nothing))
    }

    /// A failed commit of a running switch: the exchange goes on as a sync
    /// one; its end is then answered directly.
    @Test func aFailedCommitOfARunningSwitchKeepsTheExchange() {
        let (m, actions) = Self.run([.forward(.acquired, claim: false), .deadline, .commitFailed, .exchangeEnded(3)])
        #expect(actions.suffix(2) == [.none, .answerDirectly(3, claim: false)])
        #expect(m.state == .done(.nothing))
    }

    /// The client leaves during the commit: the job stands (a 202 may have
    /// been lost, the job was not), and the exchange is the job's.
    @Test func clientGoneDuringCommitLeavesTheJobStanding() {
        let (m, actions) = Self.run([.forward(.acquired, claim: false), .deadline, .clientClosed, .committed, .exchangeEnded(1)])
        #expect(actions.suffix(3) == [.none, .jobCommitted(.adoptExchange, unreserve: false), .finishJob(1)])
        #expect(m.state == .done(.nothing))
        // async + Prefer: wait: nobody to wait for, so no wait.
        let (w, waits) = Self.run([.accept(reserved: true, wait: true, claim: false), .clientClosed, .committed])
        #expect(waits.last == .jobCommitted(.dispatch, unreserve: true))
        #expect(w.state == .done(.nothing))
    }

    /// The client leaves during the commit and the commit fails: there is
    /// no job and no one to answer, so the exchange is dropped.
    @Test func clientGoneThenCommitFailedAbortsTheExchange() {
        let (m, actions) = Self.run([.forward(.acquired, claim: false), .deadline, .clientClosed, .commitFailed])
        #expect(actions.last == .abortExchange)
        #expect(m.state == .done(.nothing))
    }

    /// auto, switched while queued: a slot granted during the commit runs
    /// the job at once when the commit lands.
    @Test func slotGrantedDuringCommit() {
        let (m, actions) = Self.run([.forward(.queued, claim: false), .deadline, .slotGranted, .committed])
        #expect(actions == [.none, .commitQueued, .none, .jobCommitted(.runWithGrantedSlot, unreserve: false)])
        #expect(m.state == .done(.nothing))
        // A second grant cannot be this request's: given back.
        let (_, twice) = Self.run([.forward(.queued, claim: false), .deadline, .slotGranted, .slotGranted])
        #expect(twice.last == .releaseSlot)
    }

    /// ... and when that commit fails, the granted slot is given back.
    @Test func slotGrantedDuringAFailedCommitIsReleased() {
        let (m, actions) = Self.run([.forward(.queued, claim: false), .deadline, .slotGranted, .commitFailed])
        #expect(actions.last == .refuseUnstored(unreserve: false, withdraw: false, releaseSlot: true))
        #expect(m.state == .done(.nothing))
    }

    /// Committed while queued: the job keeps the request's place; the
    /// grant, when it comes, is the job's.
    @Test func committedWhileQueuedTheGrantIsTheJobs() {
        let (m, actions) = Self.run([.forward(.queued, claim: true), .deadline, .committed, .slotGranted, .slotGranted])
        #expect(actions.suffix(3) == [.jobCommitted(.waitInQueue, unreserve: false), .runQueuedJob, .releaseSlot])
        #expect(m.state == .done(.nothing))
    }

    /// A failed commit of a queued switch leaves the queue; a grant already
    /// on its way is given back.
    @Test func aFailedCommitOfAQueuedSwitchWithdraws() {
        let (m, actions) = Self.run([.forward(.queued, claim: false), .deadline, .commitFailed, .slotGranted])
        #expect(actions.suffix(2) == [.refuseUnstored(unreserve: false, withdraw: true, releaseSlot: false), .releaseSlot])
        #expect(m.state == .done(.nothing))
    }

    /// Race: the deadline and the last byte of the response, both ways.
    @Test func timeoutVersusLastByte() {
        let (a, first) = Self.run([.forward(.acquired, claim: true), .exchangeEnded(5), .deadline])
        #expect(first.suffix(2) == [.answerDirectly(5, claim: true), .none])
        #expect(a.state == .done(.nothing))
        let (b, second) = Self.run([.forward(.acquired, claim: true), .deadline, .exchangeEnded(5)])
        #expect(second.suffix(2) == [.commitRunning, .none])
        #expect(b.state == .committing(.init(source: .running, outcome: 5)))
    }

    // MARK: async

    @Test func asyncIsCommittedThenDispatched() {
        let (m, actions) = Self.run([.accept(reserved: true, wait: false, claim: true), .committed])
        #expect(actions == [.commitQueued, .jobCommitted(.dispatch, unreserve: true)])
        #expect(m.state == .done(.nothing))
    }

    @Test func asyncRefusedWhenTheQueueHasNoRoom() {
        let (m, actions) = Self.run([.accept(reserved: false, wait: false, claim: true)])
        #expect(actions == [.refuseQueueFull(claim: true)])
        #expect(m.state == .done(.nothing))
    }

    @Test func asyncCommitFailedGivesTheReservedPlaceBack() {
        let (m, actions) = Self.run([.accept(reserved: true, wait: false, claim: false), .commitFailed])
        #expect(actions.last == .refuseUnstored(unreserve: true, withdraw: false, releaseSlot: false))
        #expect(m.state == .done(.nothing))
    }

    @Test func asyncWithPreferWaitWaitsForTheResultOrTheDeadline() {
        let (a, ready) = Self.run([.accept(reserved: true, wait: true, claim: false), .committed, .resultReady, .deadline])
        #expect(ready == [.commitQueued, .jobCommitted(.dispatchAndWait, unreserve: true), .answerResult, .none])
        #expect(a.state == .done(.nothing))
        let (_, timedOut) = Self.run([.accept(reserved: true, wait: true, claim: false), .committed, .deadline, .resultReady])
        #expect(timedOut.suffix(2) == [.answerResult, .none])
        let (_, left) = Self.run([.accept(reserved: true, wait: true, claim: false), .committed, .clientClosed, .resultReady])
        #expect(left.suffix(2) == [.stopWaiting, .none])
    }

    // MARK: auto, no switch

    @Test func autoAnsweredWithinTheDeadlineMakesNoJob() {
        let (m, actions) = Self.run([.forward(.acquired, claim: true), .exchangeEnded(9)])
        #expect(actions == [.startExchange, .answerDirectly(9, claim: true)])
        #expect(m.state == .done(.nothing))
        let (_, queued) = Self.run([.forward(.queued, claim: false), .slotGranted, .exchangeEnded(9)])
        #expect(queued == [.none, .startExchange, .answerDirectly(9, claim: false)])
    }

    @Test func autoRefusedWhenTheQueueIsFull() {
        let (m, actions) = Self.run([.forward(.rejected, claim: true)])
        #expect(actions == [.refuseQueueFull(claim: true)])
        #expect(m.state == .done(.nothing))
    }

    // MARK: the client leaves before any job exists

    @Test func clientGoneBeforeAJob() {
        #expect(Self.run([.clientClosed]).1 == [.abandon(withdraw: false, abortExchange: false, claim: false)])
        let (q, queued) = Self.run([.forward(.queued, claim: true), .clientClosed, .slotGranted])
        #expect(queued.suffix(2) == [.abandon(withdraw: true, abortExchange: false, claim: true), .releaseSlot])
        #expect(q.state == .done(.nothing))
        let (_, running) = Self.run([.forward(.acquired, claim: true), .clientClosed, .exchangeEnded(1), .deadline])
        #expect(running.suffix(3) == [.abandon(withdraw: false, abortExchange: true, claim: true), .none, .none])
    }

    @Test func answeredEarlyIgnoresTheRest() {
        let (m, actions) = Self.run([.answeredEarly, .deadline, .committed, .clientClosed, .exchangeEnded(1)])
        #expect(actions == [.none, .none, .none, .none, .none])
        #expect(m.state == .done(.nothing))
        #expect(m.isDone && !m.isReceivingBody)
        #expect(M().isReceivingBody)
    }

    @Test func aGrantNobodyWaitsForIsGivenBack() {
        #expect(Self.run([.slotGranted]).1 == [.releaseSlot])
        #expect(Self.run([.forward(.acquired, claim: false), .slotGranted]).1.last == .releaseSlot)
        #expect(Self.run([.accept(reserved: true, wait: false, claim: false), .slotGranted]).1.last == .releaseSlot)
    }
}
