import Foundation
import TestSupport
import Testing

/// SPEC §5b with a real `redis-server` and real coatcheck processes: two
/// replicas on one Redis behave as one coatcheck, a dead replica's jobs are
/// taken over after the lease under the restart rule, and a Redis that
/// dies, freezes or restarts costs new jobs a 503, never an acknowledged one.
/// One test at a time: they time leases and wake-ups on a 2-core machine.
@Suite(.serialized) struct RedisReplicaTests {
    /// A replica process and its ports.
    struct Replica {
        let child: Child
        let port: Int
        let admin: Int
    }

    /// A config for replicas of one Redis: `/bytes/` passes through to
    /// `syncPort` (when given), everything else is an async job sent to
    /// `upstreamPort`.
    static func config(redis: RedisServer, upstreamPort: Int, syncPort: Int? = nil, lease: String = "2s",
                       maxConcurrency: Int = 8, resultTTL: String = "1h", bindTo: Bool = false,
                       mode: String = "async", asyncAfter: String = "2s", threads: Int = 2,
                       callback: String? = nil, jobsDir: String? = nil, retry: String? = nil,
                       waitReplicas: Int = 0, grace: String = "500ms") throws -> String {
        let auth = redis.password.map { ":\($0)@" } ?? ""
        var text = """
            listen: "127.0.0.1:0"
            admin_listen: "127.0.0.1:0"
            threads: \(threads)
            store: "redis://\(auth)127.0.0.1:\(redis.port)/0"
            redis: { lease: \(lease), wait_replicas: \(waitReplicas) }
            limits: { shutdown_grace: \(grace) }
            jobs: { result_ttl: \(resultTTL)\(bindTo ? ", bind_to: \"header:Authorization\"" : "")\(jobsDir.map { ", dir: \"\($0)\"" } ?? "") }
            upstreams:
              app: { url: "http://127.0.0.1:\(upstreamPort)", max_concurrency: \(maxConcurrency)\(retry.map { ", retry: \($0)" } ?? "") }

            """
        if let syncPort { text += "  plain: { url: \"http://127.0.0.1:\(syncPort)\" }\n" }
        text += "routes:\n"
        if syncPort != nil {
            text += "  - match: { path_prefix: \"/bytes/\" }\n    upstream: plain\n    mode: sync\n"
        }
        text += "  - match: { path_prefix: \"/\" }\n    upstream: app\n    mode: \(mode)\n    async_after: \(asyncAfter)\n"
        if let callback { text += "    callback: \(callback)\n" }
        return try writeTempFile(text)
    }

    /// A replica, once ready: it listens before Redis is connected, and
    /// says so on /readyz.
    static func start(_ config: String) throws -> Replica {
        let (child, port, admin) = try serveProcess(["--config", config])
        guard let admin else { throw TestError("no admin port") }
        guard waitUntil(timeout: 10, { (try? get(admin, "/readyz"))?.status == 200 }) else {
            throw TestError("the replica never became ready: \(child.output.suffix(5))")
        }
        return Replica(child: child, port: port, admin: admin)
    }

    /// Whether a replica still runs, and its last lines: for a failure's message.
    static func state(_ r: Replica) -> String {
        let status = r.child.process.isRunning ? "running" : "exited with \(r.child.waitForExit(timeout: 1) ?? -1)"
        return "replica \(status); its last lines:\n" + r.child.output.suffix(12).joined(separator: "\n")
    }

    /// Every key Redis holds now.
    static func keys(_ redis: RedisServer) throws -> [String] {
        var args = ["-p", "\(redis.port)", "--scan"]
        if let p = redis.password { args = ["-a", p, "--no-auth-warning"] + args }
        let c = try Child(args, executable: "/usr/bin/redis-cli")
        guard c.waitForExit(timeout: 10) == 0, c.waitForOutputEnd() else { throw TestError("redis-cli failed: \(c.output)") }
        return c.output.filter { !$0.isEmpty }.sorted()
    }

    // MARK: - The job API on any replica

    /// A job made on A is the same job on B: status, long poll, the
    /// result byte for byte, and the same 404 for what either does not show.
    @Test func aJobMadeOnOneReplicaIsServedByTheOther() throws {
        let redis = try RedisServer()
        let (backend, backendPort) = try demoBackendProcess()
        let config = try Self.config(redis: redis, upstreamPort: backendPort, bindTo: true)
        let a = try Self.start(config), b = try Self.start(config)
        let body = "payload \u{7F} with bytes"
        let job = try createJob(a.port, path: "/echo", headers: ["Authorization: Bearer one", "Content-Type: text/x-test"], body: body)
        let status = try awaitTerminal(b.port, job.id, headers: ["Authorization: Bearer one"])
        #expect(status.string("status") == "completed")
        #expect(status.object("response")?.int("status") == 200)
        let onA = try sendRequest(a.port, method: "GET", path: "/jobs/\(job.id)/result", headers: ["Authorization: Bearer one"])
        let onB = try sendRequest(b.port, method: "GET", path: "/jobs/\(job.id)/result", headers: ["Authorization: Bearer one"])
        #expect(onB.status == 200)
        #expect(onB.text == body)
        #expect(onB.header("content-type") == "text/x-test")
        #expect(onB.header("x-echo-method") == "POST")
        #expect(wireView(onA) == wireView(onB), "the replay is the same on either replica")
        // Another credential, an unknown id, a malformed id: one 404 on both.
        let expected = wireView(try jobStatus(a.port, unknownJobID(), headers: ["Authorization: Bearer one"]).0)
        #expect(expected.hasPrefix("404 "))
        for port in [a.port, b.port] {
            #expect(wireView(try jobStatus(port, job.id, headers: ["Authorization: Bearer two"]).0) == expected)
            #expect(wireView(try jobStatus(port, job.id).0) == expected)
            #expect(wireView(try jobStatus(port, unknownJobID(), headers: ["Authorization: Bearer one"]).0) == expected)
            #expect(wireView(try jobStatus(port, "not-an-id", headers: ["Authorization: Bearer one"]).0) == expected)
        }
        _ = backend
    }

    /// A long poll on B wakes within 100 ms of the job's end on A.
    @Test func aLongPollOnOneReplicaWakesWhenTheJobEndsOnAnother() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port)
        let a = try Self.start(config)
        let job = try createJob(a.port)
        #expect(upstream.waitForRequests(1))
        let b = try Self.start(config)
        let statusPoll = try RawClient(port: b.port, timeout: 15)
        try statusPoll.send("GET /jobs/\(job.id)?wait=10 HTTP/1.1\r\nHost: test.local\r\n\r\n")
        let resultPoll = try RawClient(port: b.port, timeout: 15)
        try resultPoll.send("GET /jobs/\(job.id)/result?wait=10 HTTP/1.1\r\nHost: test.local\r\n\r\n")
        // Both are held while the job runs on A (no event says "held": a bounded look).
        statusPoll.setTimeout(0.2)
        #expect((try? statusPoll.fill()) == nil, "the long poll answered while the job was running")
        statusPoll.setTimeout(15)
        upstream.release()
        let s = try statusPoll.readResponse()
        let sAt = ContinuousClock.now
        let r = try resultPoll.readResponse()
        let rAt = ContinuousClock.now
        let replied = try #require(upstream.repliedAt.first)
        #expect(jsonObject(s)?.string("status") == "completed", "\(s.text)")
        #expect(r.status == 200)
        #expect(r.text == "done")
        let statusLag = Double((sAt - replied) / .milliseconds(1))
        let resultLag = Double((rAt - replied) / .milliseconds(1))
        #expect(statusLag < 100, "the status poll on B woke \(statusLag) ms after the upstream answered A")
        #expect(resultLag < 100, "the result poll on B woke \(resultLag) ms after the upstream answered A")
    }

    /// DELETE on B aborts the exchange running on A, and A's slot is free again.
    @Test func aDeleteOnOneReplicaAbortsTheExchangeOnAnother() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, maxConcurrency: 1)
        let a = try Self.start(config)
        let job = try createJob(a.port)
        #expect(upstream.waitForRequests(1))
        let b = try Self.start(config)
        let r = try sendRequest(b.port, method: "DELETE", path: "/jobs/\(job.id)")
        #expect(r.status == 200)
        #expect(jsonObject(r)?.string("status") == "canceled")
        #expect(upstream.waitForPeerCloses(1), "A closed the upstream exchange")
        #expect(upstream.snapshot.closedWhileWaiting == 1)
        #expect(try jobStatus(a.port, job.id).1.string("status") == "canceled")
        // The only global slot came back: the next job is sent.
        let next = try createJob(b.port)
        #expect(upstream.waitForRequests(2))
        upstream.releaseAll()
        #expect(try awaitTerminal(a.port, next.id).string("status") == "completed")
    }

    /// Idempotency-Key holds across replicas: the same request is the same
    /// job on either; another body under the key is a 422.
    @Test func anIdempotencyKeyIsOneJobAcrossReplicas() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream()
        let config = try Self.config(redis: redis, upstreamPort: upstream.port)
        let a = try Self.start(config), b = try Self.start(config)
        let first = try createJob(a.port, headers: ["Idempotency-Key: order-7"], body: "same")
        let again = try createJob(b.port, headers: ["Idempotency-Key: order-7"], body: "same")
        #expect(again.id == first.id)
        let other = try sendRequest(b.port, headers: ["Idempotency-Key: order-7"], body: "different")
        #expect(other.status == 422)
        #expect(try awaitTerminal(b.port, first.id).string("status") == "completed")
        #expect(upstream.requestCount == 1)
    }

    /// `max_concurrency` holds for the replicas together: 200 jobs over
    /// two replicas (two loops each) never put more than 3 in flight.
    @Test func maxConcurrencyHoldsAcrossReplicas() throws {
        let redis = try RedisServer()
        let (backend, backendPort) = try demoBackendProcess()
        let config = try Self.config(redis: redis, upstreamPort: backendPort, maxConcurrency: 3)
        let a = try Self.start(config), b = try Self.start(config)
        let ports = [a.port, b.port]
        let ids = try onThreads(8, timeout: 60) { t in
            (0..<25).compactMap { i -> String? in
                do {
                    return try createJob(ports[(t + i) % 2], method: "GET", path: "/sleep?ms=10").id
                } catch {
                    print("create failed: \(error)")
                    return nil
                }
            }
        }.flatMap { $0 ?? [] }
        #expect(ids.count == 200)
        for (i, id) in ids.enumerated() {
            #expect(try awaitTerminal(i % 2 == 0 ? a.port : b.port, id, seconds: 60).string("status") == "completed")
        }
        let stats = try #require(jsonObject(try get(backendPort, "/stats")))
        #expect(stats.int("requests") == 201)
        #expect(stats.int("max_in_flight") == 3, "the backend saw \(stats.int("max_in_flight") ?? -1) at once")
        _ = backend
    }

    /// A 503 with `Retry-After` puts the job back in Redis for that long;
    /// then whichever replica looks first sends it again, as attempt 2.
    @Test func aRetriedJobWaitsInRedisAndIsSentAgain() throws {
        let redis = try RedisServer()
        let answered = Box(0)
        let upstream = try FakeUpstream { bytes in
            guard isWholeRequest(bytes) else { return nil }
            let n = answered.withLock { n in
                n += 1
                return n
            }
            let busy = "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            return Array((n == 1 ? busy : FakeUpstream.doneReply).utf8)
        }
        let config = try Self.config(redis: redis, upstreamPort: upstream.port,
                                     retry: "{ attempts: 3, backoff: 100ms, max_backoff: 200ms }")
        let a = try Self.start(config), b = try Self.start(config)
        let job = try createJob(a.port, method: "PUT", path: "/busy", body: "x")
        #expect(upstream.waitForRequests(1))
        let first = ContinuousClock.now
        #expect(upstream.waitForRequests(2, timeout: 10))
        let waited = secondsSince(first)
        #expect(waited >= 0.95, "Retry-After: 1 honoured over max_backoff 200ms, sent again after \(waited) s")
        #expect(rawHead(upstream.requests[1])?.values("job-attempt") == ["2"])
        let json = try awaitTerminal(b.port, job.id)
        #expect(json.string("status") == "completed")
        #expect(json.int("attempts") == 2)
    }

    // MARK: - Claims and takeover

    /// A job longer than several leases is never sent by a second replica
    /// while the first lives: the claim is renewed with the exchange.
    @Test func aLongJobIsNotSentTwiceWhileItsReplicaLives() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, lease: "1s")
        let a = try Self.start(config), b = try Self.start(config)
        let job = try createJob(a.port, method: "GET", path: "/long")
        #expect(upstream.waitForRequests(1))
        // Four leases: any lapse would have let a replica send it again.
        #expect(!upstream.waitForRequests(2, timeout: 4))
        upstream.release()
        let json = try awaitTerminal(b.port, job.id)
        #expect(json.string("status") == "completed")
        #expect(json.int("attempts") == 1)
        #expect(upstream.requestCount == 1)
    }

    /// A replica killed during an idempotent job: another takes it over once,
    /// after the lease and not before, as attempt 2; its queued jobs run too.
    @Test func aKilledReplicasJobsAreTakenOverAfterTheLease() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, lease: "2s", maxConcurrency: 1)
        let a = try Self.start(config)
        let running = try createJob(a.port, method: "GET", path: "/long")
        #expect(upstream.waitForRequests(1))
        let queued = try createJob(a.port, method: "PUT", path: "/queued", body: "q")
        let b = try Self.start(config)
        a.child.signal(SIGKILL)
        _ = a.child.waitForExit()
        let killed = ContinuousClock.now
        #expect(upstream.waitForRequests(2, timeout: 10))
        let after = secondsSince(killed)
        // Renewed every third of the lease: it lapses 1.33-2 s after the kill.
        #expect(after >= 1.2, "taken over \(after) s after the kill, before the lease lapsed")
        #expect(after < 5, "taken over \(after) s after the kill")
        let retried = try #require(rawHead(upstream.requests[1]))
        #expect(retried.startLine == "GET /long HTTP/1.1")
        #expect(retried.values("job-attempt") == ["2"])
        upstream.releaseAll()
        let first = try awaitTerminal(b.port, running.id)
        #expect(first.string("status") == "completed")
        #expect(first.int("attempts") == 2)
        #expect(try awaitTerminal(b.port, queued.id).string("status") == "completed")
        #expect(upstream.requestLines == ["GET /long HTTP/1.1", "GET /long HTTP/1.1", "PUT /queued HTTP/1.1"])
    }

    /// A POST without an Idempotency-Key whose replica died mid-exchange is
    /// not sent again: it fails `interrupted` (the restart rule).
    @Test func aKilledReplicasUnkeyedPostFailsInterrupted() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, lease: "1s")
        let a = try Self.start(config)
        let job = try createJob(a.port, body: "once")
        #expect(upstream.waitForRequests(1))
        let b = try Self.start(config)
        a.child.signal(SIGKILL)
        _ = a.child.waitForExit()
        let json = try awaitTerminal(b.port, job.id)
        #expect(json.string("status") == "failed")
        #expect(json.object("error")?.string("code") == "interrupted")
        #expect(upstream.requestCount == 1)
    }

    // MARK: - Webhooks

    static let secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "an-older-raw-secret"]

    /// The route's `callback:` for a receiver on `port`, retrying quickly.
    static func callback(_ port: Int, timeout: String = "2s") -> String {
        "{ allow: [\"http://127.0.0.1:\(port)/\"], secrets: [\"\(secrets[0])\", \"\(secrets[1])\"], "
            + "retry: { attempts: 5, backoff: 50ms, max_backoff: 200ms }, timeout: \(timeout) }"
    }

    /// Jobs made on either replica are each delivered once, signed, by one
    /// of them; a receiver's 503 is retried; the status on either replica
    /// says delivered.
    @Test func eachJobsWebhookIsDeliveredOnceByOneReplica() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream()
        let receiver = try WebhookReceiver(secrets: Self.secrets, answers: ["503", "204"])
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, callback: Self.callback(receiver.port))
        let a = try Self.start(config), b = try Self.start(config)
        var ids: [String] = []
        for i in 0..<20 {
            ids.append(try createJob(i % 2 == 0 ? a.port : b.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/hook/\(i)"]).id)
        }
        // The first delivery met the 503 and was retried: 21 requests in all.
        var seen: [String: Int] = [:]
        for n in 1...21 {
            let d = try receiver.delivery(n)
            #expect(d["verified"] as? [Bool] == [true, true])
            let id = (d["headers"] as? [String: String])?["webhook-id"] ?? "?"
            seen[id, default: 0] += 1
        }
        #expect(Set(seen.keys) == Set(ids))
        #expect(seen.values.sorted() == Array(repeating: 1, count: 19) + [2])
        for (i, id) in ids.enumerated() {
            let port = i % 2 == 0 ? b.port : a.port
            var callback: [String: Any] = [:]
            #expect(waitUntil(timeout: 5) {
                callback = (try? jobStatus(port, id))?.1.object("callback") ?? [:]
                return callback.string("status") == "delivered"
            }, "\(callback)")
            #expect(callback.int("attempts") == seen[id])
        }
        #expect(!receiver.child.waitForOutput(beyond: receiver.child.output.count, timeout: 0.5), "nothing sent twice")
    }

    /// A delivery its replica was making when it died is taken by the other
    /// once the delivery's claim lapses, in the same round (same webhook-id).
    @Test func aDeadReplicasDeliveryIsTakenOver() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream()
        let hook = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, lease: "1s",
                                     callback: Self.callback(hook.port, timeout: "1s"))
        let a = try Self.start(config)
        let job = try createJob(a.port, headers: ["X-Callback-Url: http://127.0.0.1:\(hook.port)/h"])
        #expect(hook.waitForRequests(1))
        let b = try Self.start(config)
        a.child.signal(SIGKILL)
        _ = a.child.waitForExit()
        let killed = ContinuousClock.now
        #expect(hook.waitForRequests(2, timeout: 10))
        #expect(secondsSince(killed) >= 1.5, "taken after the claim (2 x timeout + 1 s) lapsed")
        hook.releaseAll()
        let ids = hook.requests.compactMap { rawHead($0)?.values("webhook-id").first }
        #expect(ids == [job.id, job.id])
        var callback: [String: Any] = [:]
        #expect(waitUntil(timeout: 5) {
            callback = (try? jobStatus(b.port, job.id))?.1.object("callback") ?? [:]
            return callback.string("status") == "delivered"
        }, "\(callback)")
    }

    /// A delivery ended `failed` (410) on one replica is re-armed on the
    /// other and delivered in a new round.
    @Test func aFailedDeliveryIsReArmedOnAnotherReplica() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream()
        let receiver = try WebhookReceiver(secrets: Self.secrets, answers: ["410", "204"])
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, callback: Self.callback(receiver.port))
        let a = try Self.start(config)
        let job = try createJob(a.port, headers: ["X-Callback-Url: http://127.0.0.1:\(receiver.port)/r"])
        _ = try receiver.delivery(1)
        var callback: [String: Any] = [:]
        #expect(waitUntil(timeout: 5) {
            callback = (try? jobStatus(a.port, job.id))?.1.object("callback") ?? [:]
            return callback.string("status") == "failed"
        }, "\(callback)")
        #expect(callback.string("last_error") == "http_410")
        let b = try Self.start(config)
        let rearm = try sendRequest(b.port, path: "/jobs/\(job.id)/callback", body: "")
        #expect(rearm.status == 202, "\(rearm.status) \(rearm.text)")
        #expect(jsonObject(rearm)?.object("callback")?.string("status") == "pending")
        let d = try receiver.delivery(2)
        #expect((d["headers"] as? [String: String])?["webhook-id"] == "\(job.id)-2")
        #expect(waitUntil(timeout: 5) {
            (try? jobStatus(b.port, job.id))?.1.object("callback")?.string("status") == "delivered"
        })
    }

    // MARK: - Redis faults

    /// Redis frozen for 10 s: /readyz 503 and new jobs 503 + Retry-After
    /// within the 2 s command deadline, sync routes keep working; thawed,
    /// the replica goes on by itself and the acknowledged job ends.
    @Test func aFrozenRedisRefusesNewJobsAndLosesNone() throws {
        let redis = try RedisServer()
        let (backend, backendPort) = try demoBackendProcess()
        let config = try Self.config(redis: redis, upstreamPort: backendPort, syncPort: backendPort)
        let a = try Self.start(config)
        let done = try createJob(a.port, method: "GET", path: "/status/201")
        #expect(try awaitTerminal(a.port, done.id).string("status") == "completed")
        let pending = try createJob(a.port, method: "GET", path: "/sleep?ms=500")
        redis.freeze()
        let frozen = ContinuousClock.now
        #expect(waitUntil(timeout: 4) { (try? get(a.admin, "/readyz"))?.status == 503 })
        #expect(secondsSince(frozen) < 3.5, "readyz noticed after \(secondsSince(frozen)) s")
        let refused = try sendRequest(a.port, body: "x", timeout: 5)
        #expect(refused.status == 503)
        #expect(refused.header("retry-after") != nil)
        let sync = try get(a.port, "/bytes/10")
        #expect(sync.status == 200, "sync routes do not need Redis")
        #expect(sync.body.count == 10)
        let left = 10 - secondsSince(frozen)
        if left > 0 { Thread.sleep(forTimeInterval: left) } // the freeze itself is the test's input
        redis.thaw()
        #expect(waitUntil(timeout: 10) { (try? get(a.admin, "/readyz"))?.status == 200 }, "\(Self.state(a))")
        #expect(try awaitTerminal(a.port, done.id).string("status") == "completed")
        #expect(try awaitTerminal(a.port, pending.id).string("status") == "completed")
        let fresh = try createJob(a.port, method: "GET", path: "/status/200")
        #expect(try awaitTerminal(a.port, fresh.id).string("status") == "completed")
        _ = backend
    }

    /// Redis killed: 503s at once; restarted with persistence, the queued
    /// job it had acknowledged runs; restarted without, the replica
    /// reconnects and new jobs run.
    @Test(arguments: [true, false]) func aRestartedRedisIsReconnected(persistence: Bool) throws {
        let redis = try RedisServer(persistence: persistence)
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, maxConcurrency: 1)
        let a = try Self.start(config)
        let running = try createJob(a.port, method: "GET", path: "/first")
        #expect(upstream.waitForRequests(1))
        let queued = try createJob(a.port, method: "GET", path: "/second")
        redis.kill()
        #expect(waitUntil(timeout: 4) { (try? get(a.admin, "/readyz"))?.status == 503 })
        #expect(try sendRequest(a.port, body: "x").status == 503)
        try redis.start()
        #expect(waitUntil(timeout: 10) { (try? get(a.admin, "/readyz"))?.status == 200 }, "\(Self.state(a))")
        upstream.release()
        if persistence {
            #expect(try awaitTerminal(a.port, running.id).string("status") == "completed")
            #expect(upstream.waitForRequests(2))
            upstream.releaseAll()
            #expect(try awaitTerminal(a.port, queued.id).string("status") == "completed")
        } else {
            // Redis forgot everything: the jobs are gone, as `appendonly no` promises.
            #expect(try jobStatus(a.port, queued.id).0.status == 404)
        }
        let fresh = try createJob(a.port, method: "GET", path: "/third")
        upstream.releaseAll()
        #expect(waitUntil(timeout: 10) { upstream.requestLines.contains("GET /third HTTP/1.1") })
        upstream.releaseAll()
        #expect(try awaitTerminal(a.port, fresh.id).string("status") == "completed")
    }

    /// `result_ttl` expires every key of a job: its record, request,
    /// response and Idempotency-Key.
    @Test func resultTTLExpiresEveryKeyOfAJob() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream()
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, resultTTL: "1s")
        let a = try Self.start(config)
        let job = try createJob(a.port, headers: ["Idempotency-Key: k1"], body: "abc")
        #expect(try awaitTerminal(a.port, job.id).string("status") == "completed")
        let jobKeys = try Self.keys(redis).filter { $0.contains(job.id) }
        #expect(jobKeys.count >= 2, "record and response: \(jobKeys)")
        #expect(waitUntil(timeout: 5) { ((try? Self.keys(redis)) ?? ["?"]).allSatisfy { !$0.contains(":job:") && !$0.contains(":res:") && !$0.contains(":req:") && !$0.contains(":key:") } },
                "left: \((try? Self.keys(redis)) ?? [])")
        #expect(try jobStatus(a.port, job.id).0.status == 404)
    }

    // MARK: - Metrics

    /// With Redis, `coatcheck_jobs` and `coatcheck_webhook_pending` are the
    /// replicas' jobs together, on any replica; the counters count what
    /// each replica did, so their sum over the replicas is exact.
    @Test func metricsShowRedisJobsAndCountEachReplicasWork() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, maxConcurrency: 1)
        let a = try Self.start(config), b = try Self.start(config)
        let ids = try (1...3).map { try createJob(a.port, path: "/m\($0)", body: "x").id }
        #expect(upstream.waitForRequests(1))
        for replica in [a, b] {
            var m: [String: Double] = [:]
            #expect(waitUntil(timeout: 5) {
                m = (try? scrape(adminPort: replica.admin)) ?? [:]
                return m[#"coatcheck_jobs{state="queued"}"#] == 2 && m[#"coatcheck_jobs{state="running"}"#] == 1
            }, "\(m.filter { $0.key.hasPrefix("coatcheck_jobs{") })")
        }
        upstream.releaseAll()
        for id in ids { #expect(try awaitTerminal(b.port, id).string("status") == "completed") }
        let ma = try scrape(adminPort: a.admin), mb = try scrape(adminPort: b.admin)
        let finished = #"coatcheck_jobs_finished_total{upstream="app",status="completed"}"#
        #expect((ma[finished] ?? 0) + (mb[finished] ?? 0) == 3, "\(ma.filter { $0.key.hasPrefix("coatcheck_jobs_finished") })")
        #expect((ma[#"coatcheck_store_commit_duration_seconds_count{store="redis"}"#] ?? 0) >= 3, "three jobs written on A")
        #expect(waitUntil(timeout: 5) {
            let m = (try? scrape(adminPort: a.admin)) ?? [:]
            return m[#"coatcheck_jobs{state="queued"}"#] == 0 && m[#"coatcheck_jobs{state="running"}"#] == 0
        })
    }

    // MARK: - Durability and drain

    /// `redis.wait_replicas: 1`: a 202 only once a Redis replica has the
    /// job. Without one, the write is taken back and the client gets 503
    /// (the job never runs); with one, 202.
    @Test func waitReplicasHoldsThe202UntilARedisReplicaHasTheJob() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream()
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, waitReplicas: 1)
        let a = try Self.start(config)
        let refused = try sendRequest(a.port, path: "/alone", body: "x")
        #expect(refused.status == 503)
        #expect(refused.header("retry-after") != nil)
        let replica = try RedisServer(replicaOf: redis.port)
        let job = try createJob(a.port, path: "/replicated", body: "y")
        #expect(try awaitTerminal(a.port, job.id).string("status") == "completed")
        #expect(upstream.requestLines == ["POST /replicated HTTP/1.1"], "the unacknowledged job never ran")
        #expect(try Self.keys(redis).filter { $0.contains(":job:") }.count == 1)
        _ = replica
    }

    /// SIGTERM on a replica: its running job's exchange finishes and its end
    /// is written (not sent again elsewhere); its queued job is left to the
    /// other replica; it exits 0.
    @Test func aDrainingReplicaFinishesItsJobAndLeavesTheQueueToTheOthers() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, maxConcurrency: 1, grace: "10s")
        let a = try Self.start(config)
        let running = try createJob(a.port, method: "GET", path: "/running")
        #expect(upstream.waitForRequests(1))
        let queued = try createJob(a.port, method: "GET", path: "/queued")
        let b = try Self.start(config)
        a.child.signal(SIGTERM)
        _ = try a.child.waitForLine(containing: "draining")
        upstream.release()
        #expect(a.child.waitForExit(timeout: 15) == 0)
        #expect(upstream.waitForRequests(2))
        upstream.releaseAll()
        let first = try awaitTerminal(b.port, running.id)
        #expect(first.string("status") == "completed")
        #expect(first.int("attempts") == 1)
        #expect(try awaitTerminal(b.port, queued.id).string("status") == "completed")
        #expect(upstream.requestLines == ["GET /running HTTP/1.1", "GET /queued HTTP/1.1"])
    }

    // MARK: - Configuration

    /// Replicas on one host may share `jobs.dir`: each spools in a
    /// directory of its own, and a starting one removes only the spools of
    /// replicas that are gone (their lock is free), never a live one's.
    @Test func replicasSharingJobsDirKeepEachOthersSpools() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream()
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let dead = dir + "/replica-gone-1-0"
        try FileManager.default.createDirectory(atPath: dead, withIntermediateDirectories: true)
        #expect(FileManager.default.createFile(atPath: dead + "/.lock", contents: nil))
        #expect(FileManager.default.createFile(atPath: dead + "/\(unknownJobID()).req", contents: Data("left".utf8)))
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, jobsDir: dir)
        let a = try Self.start(config)
        #expect(!FileManager.default.fileExists(atPath: dead), "a dead replica's spool is removed")
        let mine = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("replica-") }
        #expect(mine.count == 1)
        let b = try Self.start(config)
        let both = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("replica-") }
        #expect(both.count == 2 && both.contains(mine[0]), "B left A's spool alone: \(both)")
        let job = try createJob(b.port, body: "through B")
        #expect(try awaitTerminal(a.port, job.id).string("status") == "completed")
        b.child.signal(SIGTERM)
        #expect(b.child.waitForExit() == 0)
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("replica-") }
        #expect(left == mine, "a clean stop removes its own spool directory")
    }

    /// SIGHUP adding an upstream and its route: jobs for it are claimed
    /// and sent from then on.
    @Test func aReloadedUpstreamIsClaimedFor() throws {
        let redis = try RedisServer()
        let first = try FakeUpstream(), second = try FakeUpstream()
        let path = try Self.config(redis: redis, upstreamPort: first.port)
        let a = try Self.start(path)
        let before = try String(contentsOfFile: path, encoding: .utf8)
        let after = before
            .replacingOccurrences(of: "upstreams:\n", with: "upstreams:\n  added: { url: \"http://127.0.0.1:\(second.port)\" }\n")
            .replacingOccurrences(of: "routes:\n", with: "routes:\n  - match: { path_prefix: \"/added/\" }\n    upstream: added\n    mode: async\n")
        try after.write(toFile: path, atomically: true, encoding: .utf8)
        a.child.signal(SIGHUP)
        _ = try a.child.waitForLine(containing: "configuration reloaded")
        let job = try createJob(a.port, path: "/added/x", body: "new")
        #expect(try awaitTerminal(a.port, job.id).string("status") == "completed")
        #expect(second.requestLines == ["POST /added/x HTTP/1.1"])
        #expect(first.requestCount == 0)
    }

    /// The password is sent, never shown.
    @Test func aPasswordInTheURLIsUsedAndNeverLogged() throws {
        let redis = try RedisServer(password: "s3cret-pw")
        let upstream = try FakeUpstream()
        let config = try Self.config(redis: redis, upstreamPort: upstream.port)
        let a = try Self.start(config)
        let job = try createJob(a.port)
        #expect(try awaitTerminal(a.port, job.id).string("status") == "completed")
        a.child.signal(SIGTERM)
        _ = a.child.waitForExit()
        #expect(a.child.waitForOutputEnd())
        #expect(a.child.output.contains { $0.contains("redis connected") })
        #expect(!a.child.output.contains { $0.contains("s3cret-pw") })
    }

    // MARK: - auto

    /// `auto` on Redis: a fast answer is relayed with no job; a slow one
    /// becomes a job past `async_after`, claimed by the replica whose
    /// exchange goes on, seen and replayed on the other; sent once.
    @Test func autoRequestsBecomeSharedJobsPastAsyncAfter() throws {
        let redis = try RedisServer()
        let (backend, backendPort) = try demoBackendProcess()
        let config = try Self.config(redis: redis, upstreamPort: backendPort, mode: "auto", asyncAfter: "300ms")
        let a = try Self.start(config), b = try Self.start(config)
        let fast = try sendRequest(a.port, path: "/echo", body: "quick")
        #expect(fast.status == 200)
        #expect(fast.text == "quick")
        #expect(fast.header("job-id") == nil, "answered directly: no job")
        let started = ContinuousClock.now
        let job = try createJob(a.port, method: "GET", path: "/sleep?ms=1200")
        let switched = secondsSince(started)
        #expect(switched >= 0.29 && switched < 1.0, "the 202 came after \(switched) s")
        let onB = try jobStatus(b.port, job.id).1
        #expect(onB.string("status") == "running")
        #expect(onB.int("attempts") == 1)
        let done = try awaitTerminal(b.port, job.id)
        #expect(done.string("status") == "completed")
        #expect(done.int("attempts") == 1)
        let result = try sendRequest(b.port, method: "GET", path: "/jobs/\(job.id)/result")
        #expect(result.status == 200)
        #expect(result.text == "{\"slept_ms\":1200}")
        let stats = try #require(jsonObject(try get(backendPort, "/stats")))
        #expect(stats.int("requests") == 3, "the fast one, the slow one once, and /stats")
        _ = backend
    }

    /// An `auto` job whose exchange runs on A is aborted by a DELETE on B.
    @Test func anAutoJobsExchangeIsAbortedFromTheOtherReplica() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, mode: "auto", asyncAfter: "200ms")
        let a = try Self.start(config), b = try Self.start(config)
        let job = try createJob(a.port, method: "GET", path: "/held")
        #expect(upstream.requestCount == 1)
        let r = try sendRequest(b.port, method: "DELETE", path: "/jobs/\(job.id)")
        #expect(jsonObject(r)?.string("status") == "canceled")
        #expect(upstream.waitForPeerCloses(1), "A closed the exchange")
        #expect(upstream.snapshot.closedWhileWaiting == 1)
        #expect(try jobStatus(a.port, job.id).1.string("status") == "canceled")
    }

    /// An `auto` request still waiting for a slot at `async_after` is
    /// written queued, and runs once a slot frees (on whichever replica).
    @Test func anAutoRequestWaitingForASlotBecomesAQueuedJob() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, maxConcurrency: 1, mode: "auto",
                                     asyncAfter: "200ms")
        let a = try Self.start(config)
        let first = try createJob(a.port, method: "GET", path: "/first")
        let second = try createJob(a.port, method: "GET", path: "/second")
        #expect(try jobStatus(a.port, second.id).1.string("status") == "queued")
        #expect(upstream.requestCount == 1)
        upstream.release()
        #expect(upstream.waitForRequests(2))
        upstream.releaseAll()
        #expect(try awaitTerminal(a.port, first.id).string("status") == "completed")
        let json = try awaitTerminal(a.port, second.id)
        #expect(json.string("status") == "completed")
        #expect(json.int("attempts") == 1)
        #expect(upstream.requestLines == ["GET /first HTTP/1.1", "GET /second HTTP/1.1"])
    }

    /// A replica killed while an `auto` job's exchange runs there: the other
    /// takes the job over after the lease (a GET: sent again, attempt 2).
    @Test func aKilledReplicasAutoJobIsTakenOver() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, lease: "1s", mode: "auto", asyncAfter: "200ms")
        let a = try Self.start(config)
        let job = try createJob(a.port, method: "GET", path: "/report")
        let b = try Self.start(config)
        a.child.signal(SIGKILL)
        _ = a.child.waitForExit()
        #expect(upstream.waitForRequests(2, timeout: 10))
        #expect(rawHead(upstream.requests[1])?.values("job-attempt") == ["2"])
        upstream.releaseAll()
        let json = try awaitTerminal(b.port, job.id)
        #expect(json.string("status") == "completed")
        #expect(json.int("attempts") == 2)
    }

    /// An Idempotency-Key on an `auto` route that names a job already
    /// answers with it, on any replica; another body under it is a 422.
    @Test func anAutoRequestWithATakenKeyGetsItsJob() throws {
        let redis = try RedisServer()
        let upstream = try FakeUpstream(gated: true)
        let config = try Self.config(redis: redis, upstreamPort: upstream.port, mode: "auto", asyncAfter: "200ms")
        let a = try Self.start(config), b = try Self.start(config)
        let job = try createJob(a.port, headers: ["Idempotency-Key: k-auto"], body: "one")
        let again = try createJob(b.port, headers: ["Idempotency-Key: k-auto"], body: "one")
        #expect(again.id == job.id)
        #expect(try sendRequest(b.port, headers: ["Idempotency-Key: k-auto"], body: "two").status == 422)
        upstream.releaseAll()
        #expect(try awaitTerminal(b.port, job.id).string("status") == "completed")
        #expect(upstream.requestCount == 1)
    }
}
