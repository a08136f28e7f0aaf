import Config
import Foundation
import TestSupport
import Testing

// SPEC §4, webhooks: X-Callback-Url checked before a job exists, delivery
// when the job ends with Standard Webhooks signatures, the outcome rules of
// one attempt, retries, rotation, https receivers. The receiver is a real
// process that verifies the signatures with its own HMAC.

private let secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "an-older-raw-secret"]
private let webhookPKI = Result { try TestPKI() }

/// An async proxy in front of `upstreamPort` whose route allows callbacks to
/// `allow`, retrying quickly.
private func webhookProxy(upstreamPort: Int, allow: [String], attempts: Int = 4, sqliteDir: String? = nil,
                          caFile: String? = nil) throws -> TestProxy {
    try jobProxy(upstreamPort: upstreamPort, mode: .async) { c in
        if let sqliteDir {
            c.jobs.dir = sqliteDir
            c.store = .sqlite(path: "\(sqliteDir)/coatcheck.db")
        }
        var cb = Callback()
        cb.allow = allow.map { CallbackURL.parse($0)! }
        cb.secrets = secrets
        cb.retry = RetryPolicy(attempts: attempts, backoff: .milliseconds(50), maxBackoff: .milliseconds(200))
        cb.timeout = .seconds(2)
        cb.caFile = caFile
        c.routes[0].callback = cb
        c.adminListen = SocketAddressSpec(host: "127.0.0.1", port: 0)
    }
}

private func headers(_ d: [String: Any]) -> [String: String] { d["headers"] as? [String: String] ?? [:] }

/// Waits until the job's callback is no longer pending; its `callback` object.
private func awaitCallback(_ port: Int, _ id: String, timeout: Double = 10) throws -> [String: Any] {
    var callback: [String: Any] = [:]
    let ended = waitUntil(timeout: timeout) {
        callback = (try? jobStatus(port, id))?.1.object("callback") ?? [:]
        return callback.string("status").map { $0 != "pending" } ?? false
    }
    guard ended else { throw TestError("callback of \(id) still pending: \(callback)") }
    return callback
}

extension JobTests {
    @Suite struct Webhooks {
        @Test func aCompletedJobIsDeliveredWithItsResultSignedByEachSecret() throws {
            let receiver = try WebhookReceiver(secrets: secrets)
            let upstream = try FakeUpstream { bytes in
                guard isWholeRequest(bytes) else { return nil }
                return Array("HTTP/1.1 201 Created\r\nContent-Type: text/csv\r\nContent-Length: 7\r\n\r\na,b\n1,2".utf8)
            }
            let proxy = try webhookProxy(upstreamPort: upstream.port, allow: ["http://127.0.0.1:\(receiver.port)/hooks"])
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/hooks/done?x=1"])
            #expect(job.json.object("callback") == nil, "the 202 keeps SPEC's fields")

            let d = try receiver.delivery(1)
            #expect(d["path"] as? String == "/hooks/done?x=1")
            #expect(d["size"] as? Int == 7)
            #expect(d["verified"] as? [Bool] == [true, true], "one signature per secret, each verified")
            let h = headers(d)
            #expect(h["content-type"] == "text/csv")
            #expect(h["job-id"] == job.id)
            #expect(h["job-status"] == "completed")
            #expect(h["job-response-status"] == "201")
            #expect(h["webhook-id"] == job.id)
            #expect(h["webhook-signature"]?.split(separator: " ").count == 2)
            let ts = Int(h["webhook-timestamp"] ?? "") ?? 0
            #expect(abs(ts - Int(Date().timeIntervalSince1970)) < 60)

            let callback = try awaitCallback(proxy.port, job.id)
            #expect(callback.string("status") == "delivered")
            #expect(callback.int("attempts") == 1)
            #expect(callback.isNull("last_error"))
            #expect(callback.string("url") == "http://127.0.0.1:\(receiver.port)/hooks/done?x=1")
        }

        @Test func aFailedJobDeliversItsStatusJSON() throws {
            let receiver = try WebhookReceiver(secrets: secrets)
            let proxy = try webhookProxy(upstreamPort: try closedPort(), allow: ["http://127.0.0.1:\(receiver.port)/"])
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/"])
            let d = try receiver.delivery(1)
            let h = headers(d)
            #expect(h["job-status"] == "failed")
            #expect(h["job-response-status"] == nil)
            #expect(h["content-type"] == "application/json")
            #expect(d["verified"] as? [Bool] == [true, true])
            #expect(try awaitCallback(proxy.port, job.id).string("status") == "delivered")
        }

        @Test func failedAttemptsAreRetriedWithTheSameWebhookID() throws {
            let receiver = try WebhookReceiver(secrets: secrets, answers: ["500", "503/1", "200"])
            let proxy = try webhookProxy(upstreamPort: try FakeUpstream().port, allow: ["http://127.0.0.1:\(receiver.port)/"])
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/r"])
            let first = try receiver.delivery(1), second = try receiver.delivery(2), third = try receiver.delivery(3)
            #expect(Set([first, second, third].map { headers($0)["webhook-id"] ?? "" }) == [job.id])
            #expect([first, second, third].allSatisfy { $0["verified"] as? [Bool] == [true, true] })
            let callback = try awaitCallback(proxy.port, job.id)
            #expect(callback.string("status") == "delivered")
            #expect(callback.int("attempts") == 3)
            // Every attempt counted by its result; none pending any more.
            let m = try scrape(proxy)
            #expect(m[#"coatcheck_webhook_deliveries_total{route="/",result="failed_attempt"}"#] == 2)
            #expect(m[#"coatcheck_webhook_deliveries_total{route="/",result="delivered"}"#] == 1)
            #expect(m["coatcheck_webhook_pending"] == 0)
        }

        @Test func a503RetryAfterIsWaitedFor() throws {
            let receiver = try WebhookReceiver(secrets: secrets, answers: ["503/1", "204"])
            let proxy = try webhookProxy(upstreamPort: try FakeUpstream().port, allow: ["http://127.0.0.1:\(receiver.port)/"])
            _ = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/"])
            _ = try receiver.delivery(1)
            let t0 = ContinuousClock.now
            _ = try receiver.delivery(2)
            #expect(ContinuousClock.now - t0 >= .milliseconds(900), "the backoff is 50 ms; Retry-After asked for 1 s")
        }

        @Test(arguments: [("410", "http_410", 1), ("302", "redirect", 2), ("500", "http_500", 2)])
        func outcomesThatEndTheDelivery(answer: String, lastError: String, attempts: Int) throws {
            let receiver = try WebhookReceiver(secrets: secrets, answers: [answer])
            let proxy = try webhookProxy(upstreamPort: try FakeUpstream().port,
                                         allow: ["http://127.0.0.1:\(receiver.port)/"], attempts: 2)
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/"])
            let callback = try awaitCallback(proxy.port, job.id)
            #expect(callback.string("status") == "failed")
            #expect(callback.string("last_error") == lastError)
            #expect(callback.int("attempts") == attempts)
            // The records are printed before each answer, but read from the
            // pipe by another thread: wait for the last one, then count.
            _ = try receiver.delivery(attempts)
            #expect(receiver.count == attempts, "a 3xx is not followed; a 410 is not retried")
        }

        @Test func aReceiverThatIsDownIsReachedOnALaterAttempt() throws {
            let port = try closedPort()
            let proxy = try webhookProxy(upstreamPort: try FakeUpstream().port, allow: ["http://127.0.0.1:\(port)/"],
                                         attempts: 40)
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(port)/late"])
            #expect(waitUntil(timeout: 5) {
                (try? jobStatus(proxy.port, job.id))?.1.object("callback")?.string("last_error") == "connect_failed"
            })
            let receiver = try WebhookReceiver(secrets: secrets, port: port)
            #expect(try receiver.delivery(1)["path"] as? String == "/late")
            let callback = try awaitCallback(proxy.port, job.id)
            #expect(callback.string("status") == "delivered")
            #expect((callback.int("attempts") ?? 0) > 1)
        }

        @Test func httpsReceiversAreVerified() throws {
            let pki = try webhookPKI.get()
            let good = try WebhookReceiver(secrets: secrets, tls: pki.certificate(.good))
            let proxy = try webhookProxy(upstreamPort: try FakeUpstream().port,
                                         allow: ["https://localhost:\(good.port)/"], attempts: 1, caFile: pki.caFile)
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: https://LOCALHOST:\(good.port)/tls"])
            #expect(try good.delivery(1)["verified"] as? [Bool] == [true, true])
            #expect(try awaitCallback(proxy.port, job.id).string("status") == "delivered")

            let wrong = try WebhookReceiver(secrets: secrets, tls: pki.certificate(.wrongHost))
            let refusing = try webhookProxy(upstreamPort: try FakeUpstream().port,
                                            allow: ["https://localhost:\(wrong.port)/"], attempts: 1, caFile: pki.caFile)
            let failed = try createJob(refusing.port, headers: ["X-Callback-Url: https://localhost:\(wrong.port)/"])
            let callback = try awaitCallback(refusing.port, failed.id)
            #expect(callback.string("status") == "failed")
            #expect(callback.string("last_error") == "tls_failed")
            #expect(wrong.count == 0)
        }

        @Test(arguments: [
            "https://hooks.example.com/x",                        // scheme
            "http://127.0.0.1:1/other/x",                         // path
            "http://127.0.0.1:1/hooksevil",                       // not at a segment boundary
            "http://127.0.0.1:1/hooks/../admin",                  // dot segments
            "http://127.0.0.1:1/hooks/%2e%2E/admin",              // encoded dot segments
            "http://127.0.0.1:1@evil.example/hooks/",             // userinfo
            "http://evil.example#@127.0.0.1:1/hooks/",            // fragment
            "http://127.0.0.1:2/hooks/",                          // port
            "http://127.0.0.1.evil.example:1/hooks/",             // host
            "not a url",
        ])
        func aURLNotUnderAnAllowedPrefixIsRefusedBeforeAnyJobExists(url: String) throws {
            let upstream = try FakeUpstream()
            let proxy = try webhookProxy(upstreamPort: upstream.port, allow: ["http://127.0.0.1:1/hooks"])
            let r = try sendRequest(proxy.port, headers: ["X-Callback-Url: \(url)"], body: "x")
            expectJSONError(r, status: 400, code: "callback_not_allowed")
            #expect(r.header("location") == nil)
            let healthy = try sendRequest(proxy.port, body: "x")
            #expect(healthy.status == 202, "the proxy goes on")
        }

        @Test func aSyncRouteRefusesTheHeaderAndForwardsNothing() throws {
            let upstream = try FakeUpstream()
            let proxy = try TestProxy(upstreamPort: upstream.port)
            let r = try sendRequest(proxy.port, headers: ["x-CALLBACK-url: http://127.0.0.1:1/"], body: "x")
            expectJSONError(r, status: 400, code: "callback_not_allowed")
            #expect(try sendRequest(proxy.port, body: "x").status == 200, "without the header it is proxied")
            #expect(upstream.waitForRequests(1))
            #expect(!upstream.waitForRequests(2, timeout: 0.2), "the refused request never reached the upstream")
        }

        @Test func twoCallbackURLsAreRefused() throws {
            let proxy = try webhookProxy(upstreamPort: try FakeUpstream().port, allow: ["http://127.0.0.1:1/"])
            let r = try sendRequest(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:1/a",
                                                          "X-Callback-Url: http://127.0.0.1:1/b"], body: "x")
            expectJSONError(r, status: 400, code: "callback_not_allowed")
        }

        @Test func aRouteWithoutCallbacksRefusesTheHeader() throws {
            let proxy = try jobProxy(upstreamPort: try FakeUpstream().port)
            let r = try sendRequest(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:1/"], body: "x")
            expectJSONError(r, status: 400, code: "callback_not_allowed")
        }

        @Test func pendingDeliveriesSurviveARestart() throws {
            let port = try closedPort()
            let upstream = try FakeUpstream()
            let dir = makeTempDirectory()
            var id = ""
            do {
                let proxy = try webhookProxy(upstreamPort: upstream.port, allow: ["http://127.0.0.1:\(port)/"],
                                             attempts: 1000, sqliteDir: dir)
                id = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(port)/again"]).id
                #expect(waitUntil(timeout: 5) {
                    (try? jobStatus(proxy.port, id))?.1.object("callback")?.string("last_error") == "connect_failed"
                })
            }
            let receiver = try WebhookReceiver(secrets: secrets, port: port)
            let proxy = try webhookProxy(upstreamPort: upstream.port, allow: ["http://127.0.0.1:\(port)/"],
                                         attempts: 1000, sqliteDir: dir)
            let d = try receiver.delivery(1)
            #expect(headers(d)["job-id"] == id)
            #expect(try awaitCallback(proxy.port, id).string("status") == "delivered")
        }

        @Test func aFailedCallbackIsReArmedForAnotherRound() throws {
            let receiver = try WebhookReceiver(secrets: secrets, answers: ["410", "204"])
            let upstream = try FakeUpstream(gated: true)
            let proxy = try webhookProxy(upstreamPort: upstream.port, allow: ["http://127.0.0.1:\(receiver.port)/"])
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/"])
            let early = try sendRequest(proxy.port, path: "/jobs/\(job.id)/callback", body: "")
            expectJSONError(early, status: 409, code: "callback_not_rearmable")
            upstream.releaseAll()
            #expect(try awaitCallback(proxy.port, job.id).string("last_error") == "http_410")

            let rearm = try sendRequest(proxy.port, path: "/jobs/\(job.id)/callback", body: "")
            #expect(rearm.status == 202)
            #expect(jsonObject(rearm)?.object("callback")?.string("status") == "pending")
            let second = try receiver.delivery(2)
            #expect(headers(second)["webhook-id"] == "\(job.id)-2", "a new round is a new message")
            #expect(second["verified"] as? [Bool] == [true, true])
            let callback = try awaitCallback(proxy.port, job.id)
            #expect(callback.string("status") == "delivered")
            #expect(callback.int("attempts") == 1)

            let get = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/callback")
            #expect(get.status == 405)
            #expect(get.header("allow") == "POST")
            let plain = try createJob(proxy.port, body: "x")
            _ = try awaitTerminal(proxy.port, plain.id)
            expectJSONError(try sendRequest(proxy.port, path: "/jobs/\(plain.id)/callback", body: ""),
                            status: 409, code: "callback_not_rearmable")
            expectJSONError(try sendRequest(proxy.port, path: "/jobs/\(unknownJobID())/callback", body: ""),
                            status: 404, code: "not_found")
        }

        @Test func a50MiBResultIsDeliveredIntactAndSigned() throws {
            let size = 50 << 20
            let receiver = try WebhookReceiver(secrets: secrets)
            // A 64 KiB pattern copied out block by block: quick even in a debug build.
            let pattern = (0..<65_536).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 7) }
            let body = [UInt8](unsafeUninitializedCapacity: size) { buffer, count in
                pattern.withUnsafeBufferPointer { p in
                    for block in stride(from: 0, to: size, by: p.count) {
                        _ = UnsafeMutableBufferPointer(rebasing: buffer[block..<(block + p.count)]).initialize(from: p)
                    }
                }
                count = size
            }
            let reply = Array("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: \(size)\r\n\r\n".utf8) + body
            let upstream = try FakeUpstream { isWholeRequest($0) ? reply : nil }
            let proxy = try webhookProxy(upstreamPort: upstream.port, allow: ["http://127.0.0.1:\(receiver.port)/"])
            let job = try createJob(proxy.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/big"])
            let d = try receiver.delivery(1, timeout: 60)
            #expect(d["size"] as? Int == size)
            #expect(d["verified"] as? [Bool] == [true, true], "signed over the whole 50 MiB, checked by the receiver")
            #expect(try awaitCallback(proxy.port, job.id, timeout: 30).string("status") == "delivered")
        }

        @Test func deliveriesPendingAtAKill9ArriveAfterTheRestart() throws {
            let port = try closedPort()
            let upstream = try FakeUpstream()
            let dir = makeTempDirectory()
            let config = try writeTempFile("""
                listen: "127.0.0.1:0"
                store: "sqlite:\(dir)/coatcheck.db"
                jobs: { dir: "\(dir)" }
                upstreams:
                  app: { url: "http://127.0.0.1:\(upstream.port)" }
                routes:
                  - match: { path_prefix: "/" }
                    upstream: app
                    mode: async
                    callback:
                      allow: ["http://127.0.0.1:\(port)/"]
                      secrets: ["\(secrets[0])", "\(secrets[1])"]
                      retry: { attempts: 1000, backoff: 50ms, max_backoff: 200ms }
                """)
            var ids: [String] = []
            do {
                let (child, proxyPort, _) = try serveProcess(["--config", config])
                for i in 0..<5 {
                    ids.append(try createJob(proxyPort, headers: ["X-Callback-Url: http://127.0.0.1:\(port)/k/\(i)"]).id)
                }
                #expect(waitUntil(timeout: 10) {
                    ids.allSatisfy { (try? jobStatus(proxyPort, $0))?.1.object("callback")?.string("last_error") == "connect_failed" }
                })
                child.signal(SIGKILL)
                #expect(child.waitForExit() != nil)
            }
            let receiver = try WebhookReceiver(secrets: secrets, port: port)
            let (restarted, proxyPort, _) = try serveProcess(["--config", config])
            defer { withExtendedLifetime(restarted) {} }
            var delivered: Set<String> = []
            for n in 1...5 {
                let d = try receiver.delivery(n)
                #expect(d["verified"] as? [Bool] == [true, true])
                delivered.insert(headers(d)["job-id"] ?? "")
            }
            #expect(delivered == Set(ids), "every delivery arrives, none is lost")
            for id in ids { #expect(try awaitCallback(proxyPort, id).string("status") == "delivered") }
        }
    }
}
