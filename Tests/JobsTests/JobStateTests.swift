import Jobs
import Testing

@Suite struct JobStateMachineTests {
    @Test func happyPath() {
        #expect(JobStateMachine.apply(.dispatched, to: .queued) == .moved(to: .running, error: nil))
        #expect(JobStateMachine.apply(.responded, to: .running) == .moved(to: .completed, error: nil))
    }

    @Test func cancelOnlyWhilePending() {
        #expect(JobStateMachine.apply(.cancel, to: .queued) == .moved(to: .canceled, error: nil))
        #expect(JobStateMachine.apply(.cancel, to: .running) == .moved(to: .canceled, error: nil))
        for terminal in JobStatus.allCases where terminal.isTerminal {
            #expect(JobStateMachine.apply(.cancel, to: terminal) == .rejected)
        }
    }

    @Test func failuresRetryOrEnd() {
        #expect(JobStateMachine.apply(.attemptFailed(.upstreamReset, retry: true), to: .running) == .moved(to: .queued, error: nil))
        #expect(JobStateMachine.apply(.attemptFailed(.upstreamTimeout, retry: false), to: .running) == .moved(to: .failed, error: .upstreamTimeout))
        #expect(JobErrorCode.upstreamTimeout.resultStatus == 504)
        #expect(JobErrorCode.upstreamReset.resultStatus == 502)
    }

    @Test func restartRecovery() {
        #expect(JobStateMachine.apply(.recovered(resend: true), to: .running) == .moved(to: .queued, error: nil))
        #expect(JobStateMachine.apply(.recovered(resend: false), to: .running) == .moved(to: .failed, error: .interrupted))
        #expect(JobStateMachine.apply(.recovered(resend: true), to: .queued) == .rejected)
    }

    @Test func terminalStatesAcceptNothing() {
        let events: [JobEvent] = [.dispatched, .responded, .cancel, .attemptFailed(.upstreamReset, retry: true), .recovered(resend: true)]
        for status in JobStatus.allCases where status.isTerminal {
            for e in events { #expect(JobStateMachine.apply(e, to: status) == .rejected, "\(status) \(e)") }
        }
        #expect(JobStateMachine.apply(.responded, to: .queued) == .rejected)
    }
}

@Suite struct JobIDTests {
    @Test func shapeAndUniqueness() {
        var seen = Set<String>()
        for _ in 0..<2000 {
            let id = JobID.random()
            #expect(id.text.utf8.count == 22)
            #expect(JobID(id.text) == id)
            #expect(id.text.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F
            })
            seen.insert(id.text)
        }
        #expect(seen.count == 2000)
        #expect(JobID.random().logPrefix.count == 8)
    }

    @Test func rejectsMalformed() {
        #expect(JobID("short") == nil)
        #expect(JobID(String(repeating: "a", count: 21) + "/") == nil)
        #expect(JobID(String(repeating: "a", count: 23)) == nil)
        #expect(JobID(String(repeating: "a", count: 22)) != nil)
    }
}
