@testable import Jobs
import Testing

/// Every transition of when a replica asks Redis for its next job.
@Suite struct ClaimScheduleTests {
    @Test func aWakeUpClaimsAndAClaimThatFoundNothingRests() {
        var s = ClaimSchedule()
        #expect(s.handle(.wake) == .claim)
        #expect(s.phase == .claiming(again: false))
        #expect(s.handle(.claimed(found: false)) == .none)
        #expect(s.phase == .resting)
    }

    @Test func aClaimThatFoundAJobAsksAgainAtOnce() {
        var s = ClaimSchedule()
        _ = s.handle(.wake)
        #expect(s.handle(.claimed(found: true)) == .claim)
        #expect(s.phase == .claiming(again: false))
    }

    /// The race: a job queued while the claim that found nothing was in
    /// flight must not wait for the next poll.
    @Test func aWakeUpDuringAClaimIsNotLost() {
        var s = ClaimSchedule()
        _ = s.handle(.wake)
        #expect(s.handle(.wake) == .none)
        #expect(s.handle(.wake) == .none)
        #expect(s.phase == .claiming(again: true))
        #expect(s.handle(.claimed(found: false)) == .claim)
        #expect(s.phase == .claiming(again: false))
        #expect(s.handle(.claimed(found: false)) == .none)
        #expect(s.phase == .resting)
    }

    @Test func failuresBackOffDoublingToTheCapAndASuccessResetsIt() {
        var s = ClaimSchedule(firstBackoff: .milliseconds(100), maxBackoff: .milliseconds(350))
        _ = s.handle(.wake)
        #expect(s.handle(.failed) == .armBackoff(.milliseconds(100)))
        #expect(s.phase == .backingOff)
        // Wake-ups wait for the backoff: Redis is not asked in a loop.
        #expect(s.handle(.wake) == .none)
        #expect(s.handle(.backoffEnded) == .claim)
        #expect(s.handle(.failed) == .armBackoff(.milliseconds(200)))
        _ = s.handle(.backoffEnded)
        #expect(s.handle(.failed) == .armBackoff(.milliseconds(350)))
        _ = s.handle(.backoffEnded)
        #expect(s.handle(.failed) == .armBackoff(.milliseconds(350)))
        _ = s.handle(.backoffEnded)
        #expect(s.handle(.claimed(found: false)) == .none)
        _ = s.handle(.wake)
        #expect(s.handle(.failed) == .armBackoff(.milliseconds(100)))
    }

    @Test func strayAnswersAndTimersChangeNothing() {
        var resting = ClaimSchedule()
        for e in [ClaimSchedule.Event.claimed(found: true), .claimed(found: false), .failed, .backoffEnded] {
            #expect(resting.handle(e) == .none)
            #expect(resting.phase == .resting)
        }
        var claiming = ClaimSchedule()
        _ = claiming.handle(.wake)
        #expect(claiming.handle(.backoffEnded) == .none)
        #expect(claiming.phase == .claiming(again: false))
        var backingOff = ClaimSchedule()
        _ = backingOff.handle(.wake)
        _ = backingOff.handle(.failed)
        for e in [ClaimSchedule.Event.claimed(found: true), .claimed(found: false), .failed] {
            #expect(backingOff.handle(e) == .none)
            #expect(backingOff.phase == .backingOff)
        }
    }
}
