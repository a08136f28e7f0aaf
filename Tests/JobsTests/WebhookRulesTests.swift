import Config
import Crypto
import Foundation
@testable import Jobs
import Testing

// The pure parts of webhooks (SPEC §4), without sockets: the outcome of one
// attempt, the Standard Webhooks signature.

private let policy = RetryPolicy(attempts: 4, backoff: .seconds(5), maxBackoff: .seconds(3600))
private let now: Int64 = 1_000_000

@Suite struct DeliveryRuleTests {
    @Test(arguments: [200, 201, 204, 299])
    func any2xxIsDelivered(status: Int) {
        #expect(DeliveryRule.decide(.answered(status: status, retryAfter: nil), attempts: 1, policy: policy,
                                    now: now, jitter: 0.5) == .delivered)
    }

    @Test func a410EndsTheDeliveryAtOnce() {
        #expect(DeliveryRule.decide(.answered(status: 410, retryAfter: nil), attempts: 1, policy: policy,
                                    now: now, jitter: 0.5) == .failed(lastError: "http_410"))
    }

    @Test(arguments: [
        (AttemptResult.answered(status: 301, retryAfter: nil), "redirect"),
        (.answered(status: 308, retryAfter: nil), "redirect"),
        (.answered(status: 500, retryAfter: nil), "http_500"),
        (.answered(status: 404, retryAfter: nil), "http_404"),
        (.answered(status: 429, retryAfter: nil), "http_429"),
        (.timedOut, "timeout"),
        (.connectFailed, "connect_failed"),
        (.tlsFailed, "tls_failed"),
        (.broken, "connection_broken"),
    ])
    func otherOutcomesAreRetriedThenFail(result: AttemptResult, lastError: String) {
        #expect(DeliveryRule.decide(result, attempts: 1, policy: policy, now: now, jitter: 0)
            == .retry(lastError: lastError, at: now + 2_500))
        #expect(DeliveryRule.decide(result, attempts: 4, policy: policy, now: now, jitter: 0)
            == .failed(lastError: lastError), "attempts ran out")
    }

    @Test func delaysDoubleUpToMaxBackoffWithEqualJitter() {
        func at(_ attempts: Int, _ jitter: Double, _ p: RetryPolicy = policy) -> Int64? {
            if case .retry(_, let at) = DeliveryRule.decide(.connectFailed, attempts: attempts, policy: p,
                                                            now: now, jitter: jitter) { return at - now }
            return nil
        }
        #expect(at(1, 0) == 2_500)
        #expect(at(1, 0.999_999) == 4_999)
        #expect(at(2, 0) == 5_000)
        #expect(at(3, 0) == 10_000)
        let capped = RetryPolicy(attempts: 10, backoff: .seconds(5), maxBackoff: .seconds(12))
        #expect(at(8, 0, capped) == 6_000, "max_backoff caps the doubling")
    }

    @Test(arguments: [429, 503])
    func retryAfterOn429And503IsWaitedAtLeast(status: Int) {
        #expect(DeliveryRule.decide(.answered(status: status, retryAfter: 120), attempts: 1, policy: policy,
                                    now: now, jitter: 0) == .retry(lastError: "http_\(status)", at: now + 120_000))
        #expect(DeliveryRule.decide(.answered(status: status, retryAfter: 1), attempts: 1, policy: policy,
                                    now: now, jitter: 0) == .retry(lastError: "http_\(status)", at: now + 2_500),
                "a shorter hint does not shorten the proxy's own delay")
        #expect(DeliveryRule.decide(.answered(status: status, retryAfter: 90_000), attempts: 1, policy: policy,
                                    now: now, jitter: 0) == .retry(lastError: "http_\(status)", at: now + 3_600_000),
                "at most an hour")
    }

    @Test func retryAfterOnOtherStatusesIsNotAHint() {
        #expect(DeliveryRule.decide(.answered(status: 500, retryAfter: 120), attempts: 1, policy: policy,
                                    now: now, jitter: 0) == .retry(lastError: "http_500", at: now + 2_500))
    }

    @Test func anUnsendableDeliveryFailsAtOnce() {
        #expect(DeliveryRule.decide(.unsendable("result_missing"), attempts: 1, policy: policy, now: now, jitter: 0)
            == .failed(lastError: "result_missing"))
    }
}

@Suite struct WebhookSignatureTests {
    // The reference example of the Standard Webhooks specification.
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    let id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    let timestamp: Int64 = 1_614_265_330
    let body = Array(#"{"test": 2432232314}"#.utf8)

    @Test func theReferenceVector() {
        #expect(WebhookSigner.sign(secrets: [secret], id: id, timestamp: timestamp, body: body)
            == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
    }

    @Test func streamingInAnyPiecesEqualsOneShot() {
        let big = (0..<100_000).map { UInt8(($0 * 31) & 0xFF) }
        let whole = WebhookSigner.sign(secrets: [secret], id: id, timestamp: timestamp, body: big)
        for piece in [1, 7, 4096, 65_537] {
            var signer = WebhookSigner(secrets: [secret], id: id, timestamp: timestamp)
            var i = 0
            while i < big.count {
                let end = min(i + piece, big.count)
                big[i..<end].withUnsafeBytes { signer.update($0) }
                i = end
            }
            #expect(signer.finalize() == whole, "pieces of \(piece)")
        }
    }

    /// RFC 4231's HMAC-SHA256 test cases 1, 2, 4 and 6 (a key longer than a block).
    @Test(arguments: [
        ([UInt8](repeating: 0x0B, count: 20), Array("Hi There".utf8),
         "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
        (Array("Jefe".utf8), Array("what do ya want for nothing?".utf8),
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
        (Array(1...25), [UInt8](repeating: 0xCD, count: 50),
         "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
        ([UInt8](repeating: 0xAA, count: 131), Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    ]) func hmacMatchesRFC4231(key: [UInt8], message: [UInt8], expected: String) {
        var mac = HMACSHA256(key: key)
        message.withUnsafeBytes { mac.update($0) }
        #expect(mac.finalize().map { String(format: "%02x", $0) }.joined() == expected)
    }

    /// The same codes as swift-crypto's `HMAC<SHA256>`, for keys and
    /// messages of every length around the block size, fed in pieces.
    @Test func hmacMatchesSwiftCrypto() {
        var generator = SystemRandomNumberGenerator()
        for keyLength in [0, 1, 31, 32, 63, 64, 65, 200] {
            for messageLength in [0, 1, 55, 56, 63, 64, 65, 1000] {
                let key = (0..<keyLength).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let message = (0..<messageLength).map { _ in UInt8.random(in: 0...255, using: &generator) }
                var mac = HMACSHA256(key: key)
                message.withUnsafeBytes { whole in
                    let half = whole.count / 2
                    mac.update(UnsafeRawBufferPointer(rebasing: whole[..<half]))
                    mac.update(UnsafeRawBufferPointer(rebasing: whole[half...]))
                }
                let reference = HMAC<SHA256>.authenticationCode(for: message, using: SymmetricKey(data: key))
                #expect(Array(mac.finalize()) == Array(reference), "key \(keyLength), message \(messageLength)")
            }
        }
    }

    @Test func oneSignaturePerSecretSpaceSeparated() {
        let both = WebhookSigner.sign(secrets: [secret, "raw secret"], id: id, timestamp: timestamp, body: body)
        let parts = both.split(separator: " ").map(String.init)
        #expect(parts.count == 2)
        #expect(parts[0] == WebhookSigner.sign(secrets: [secret], id: id, timestamp: timestamp, body: body))
        #expect(parts[1] == WebhookSigner.sign(secrets: ["raw secret"], id: id, timestamp: timestamp, body: body))
        #expect(parts[0] != parts[1])
    }

    // Expected values computed with Python's hmac module, independently of this code.
    @Test func twoSecretsGiveTwoSignaturesEachOfItsOwnKey() {
        let header = WebhookSigner.sign(secrets: ["whsec_b2xk", "raw secret"], id: id, timestamp: timestamp, body: body)
        #expect(header == "v1,CcMrCYxu2nGkW3RMERBdyXGTc/4IIfNEPUPNJdo5PWg= v1,ejzB03xbiX+BYE2p5UprnxYMT3NDCs3S0jg3homzfN0=")
    }

    @Test func rawSecretsAreTheirUTF8Bytes() {
        #expect(WebhookSigner.sign(secrets: ["ünï"], id: id, timestamp: timestamp, body: body)
            == "v1,dNSMLDmn+Ep+xcL4FDjnRn5H0cw9neCflQZKzVmO1n4=")
    }

    @Test func anEmptyBodyAndEmptyPiecesSignTheSame() {
        #expect(WebhookSigner.sign(secrets: [secret], id: "msg_1", timestamp: 0, body: [])
            == "v1,ij2G0S51rXTp+PMwqJOjeWFLEpktT32X6cQ9P08rbws=")
        var signer = WebhookSigner(secrets: [secret, "raw secret"], id: id, timestamp: timestamp)
        for piece in [[], Array(body.prefix(3)), [], Array(body.dropFirst(3)), []] as [[UInt8]] {
            piece.withUnsafeBytes { signer.update($0) }
        }
        #expect(signer.finalize() == WebhookSigner.sign(secrets: [secret, "raw secret"], id: id, timestamp: timestamp, body: body))
    }

    @Test func aSecretWithoutThePrefixIsItsOwnBytes() {
        #expect(WebhookSigner.key(of: "abc") == Array("abc".utf8))
        #expect(WebhookSigner.key(of: "whsec_YWJj") == Array("abc".utf8))
    }
}
