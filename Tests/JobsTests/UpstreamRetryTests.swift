import Config
import HTTP
@testable import Jobs
import Store
import Testing

/// SPEC §4 "Upstream retries", without sockets.
@Suite struct UpstreamRetryTests {
    static let policy = RetryPolicy(attempts: 4, backoff: .seconds(1), maxBackoff: .seconds(5))

    static func response(_ status: Int, retryAfter: Int? = nil) -> JobRunner.Outcome {
        .response(JobResponse(status: status, reason: [], headers: [], body: .empty), contentType: nil, retryAfter: retryAfter)
    }

    static func delay(_ outcome: JobRunner.Outcome, attempts: Int = 1, resendable: Bool = true) -> Duration? {
        UpstreamRetry.delay(after: outcome, attempts: attempts, resendable: resendable, policy: policy)
    }

    @Test func delaysDoubleFromBackoffUpToMaxBackoff() {
        let unsent = JobRunner.Outcome.failure(.upstreamUnreachable, "", .unsent)
        #expect((1...5).map { Self.delay(unsent, attempts: $0) } == [.seconds(1), .seconds(2), .seconds(4), nil, nil])
        let long = RetryPolicy(attempts: 10, backoff: .seconds(1), maxBackoff: .seconds(5))
        #expect(UpstreamRetry.delay(after: unsent, attempts: 6, resendable: false, policy: long) == .seconds(5))
    }

    @Test func onlyGatewayErrorsOfResendableRequestsAreRetried() {
        for status in [502, 503, 504] {
            #expect(Self.delay(Self.response(status)) == .seconds(1))
            #expect(Self.delay(Self.response(status), resendable: false) == nil)
        }
        for status in [200, 404, 500, 501, 505] { #expect(Self.delay(Self.response(status)) == nil) }
    }

    @Test func failuresByWhetherTheRequestWasSent() {
        #expect(Self.delay(.failure(.upstreamUnreachable, "", .unsent), resendable: false) == .seconds(1))
        #expect(Self.delay(.failure(.upstreamReset, "", .sentNoResponse), resendable: false) == nil)
        #expect(Self.delay(.failure(.upstreamReset, "", .sentNoResponse), resendable: true) == .seconds(1))
        #expect(Self.delay(.failure(.upstreamTimeout, "", .no)) == nil)
        #expect(Self.delay(.failure(.responseTooLarge, "", .no)) == nil)
    }

    /// A Retry-After longer than max_backoff is honoured (up to an hour);
    /// a shorter one does not shorten the proxy's own delay.
    @Test func retryAfterIsHonouredBeyondMaxBackoffUpToAnHour() {
        #expect(Self.delay(Self.response(503, retryAfter: 30)) == .seconds(30))
        #expect(Self.delay(Self.response(503, retryAfter: 3600)) == .seconds(3600))
        #expect(Self.delay(Self.response(503, retryAfter: 3601)) == nil)
        #expect(Self.delay(Self.response(503, retryAfter: 0), attempts: 3) == .seconds(4))
    }
}

@Suite struct RetryAfterParsingTests {
    static func seconds(_ text: String, now: Int64) -> Int? {
        Array(text.utf8).withUnsafeBufferPointer { retryAfterSeconds($0, nowMillis: now) }
    }

    @Test func delaySecondsAndHTTPDates() {
        #expect(Self.seconds("120", now: 0) == 120)
        #expect(Self.seconds("1.5", now: 0) == 1)
        // 784111777 is Sun, 06 Nov 1994 08:49:37 GMT.
        #expect(Self.seconds("Sun, 06 Nov 1994 08:49:37 GMT", now: 784_111_777_000 - 90_000) == 90)
        #expect(Self.seconds("Sun, 06 Nov 1994 08:49:37 GMT", now: 784_111_777_000 + 5_000) == 0)
        #expect(Self.seconds("Sun, 06 Nov 1994 08:49:37 GMT", now: 784_111_777_000 - 500) == 1)
    }

    @Test(arguments: ["", "soon", "-1", "1e3", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Foo 1994 08:49:37 GMT",
                      "Sunday, 06-Nov-94 08:49:37 GMT", "Sun, 32 Nov 1994 08:49:37 GMT", "9999999999"])
    func refusesWhatIsNeither(_ text: String) {
        #expect(Self.seconds(text, now: 0) == nil)
    }
}
