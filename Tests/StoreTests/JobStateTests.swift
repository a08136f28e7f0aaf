import Store
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
        // 22 characters carry 4 bits more than 128: they must be zero, so
        // each id has exactly one spelling.
        #expect(JobID(String(repeating: "a", count: 22)) == nil)
        #expect(JobID(String(repeating: "a", count: 21) + "Q") != nil)
        #expect(JobID(String(repeating: "_", count: 21) + "w")?.bytes == [UInt8](repeating: 0xFF, count: 16))
        #expect(JobID(String(repeating: "A", count: 22))?.bytes == [UInt8](repeating: 0, count: 16))
    }

    /// A source hands out 16 ids per getentropy call: across refills they
    /// stay distinct and well formed.
    @Test func anIDSourceNeverRepeatsAcrossItsRefills() {
        let source = JobIDSource()
        var seen = Set<JobID>()
        for _ in 0..<100 {
            let id = source.make()
            #expect(JobID(id.text) == id)
            #expect(id.text == referenceBase64URL(id.bytes))
            seen.insert(id)
        }
        #expect(seen.count == 100)
    }

    @Test func textIsBase64URLOfTheBytes() {
        for _ in 0..<200 {
            let id = JobID.random()
            #expect(id.text == referenceBase64URL(id.bytes))
            #expect(id.logPrefix == String(id.text.prefix(8)))
        }
    }
}

/// RFC 4648 §5 without padding, the plain way.
private func referenceBase64URL(_ bytes: [UInt8]) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    var bits = ""
    for b in bytes {
        let s = String(b, radix: 2)
        bits += String(repeating: "0", count: 8 - s.count) + s
    }
    while bits.count % 6 != 0 { bits += "0" }
    var out = ""
    var chars = Array(bits)[...]
    while !chars.isEmpty {
        out.append(alphabet[Int(String(chars.prefix(6)), radix: 2)!])
        chars.removeFirst(6)
    }
    return out
}
