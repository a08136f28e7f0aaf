import Foundation
import Store
import TestSupport
import Testing

/// A fresh Redis and the keys of prefix "t".
private struct Fixture {
    let server: RedisServer
    let client: RedisClient
    let keys = RedisKeys(prefix: "t")

    init() throws {
        server = try RedisServer()
        client = try RedisClient(endpoint(server))
        guard client.waitReady() else { throw TestError("redis connection not ready") }
    }

    func record(_ id: JobID = .random(), resendable: Bool = true, callback: String? = nil) -> JobRecord {
        JobRecord(id: id, status: .queued, upstream: "u", route: "r", method: resendable ? "PUT" : "POST", path: "/x",
                  createdAt: 1_000, resendable: resendable, callback: callback.map { JobCallback(url: $0) })
    }

    @discardableResult
    func create(_ r: JobRecord, key: String? = nil, now: Int64 = 1_000) throws -> RedisValue {
        let request = RedisRecord.encode(JobRequest(head: Array("PUT /x HTTP/1.1\r\n".utf8), body: .empty, declaresBody: true),
                                         body: Array("hello".utf8))
        return try client.script(
            RedisScript.create,
            keys: [keys.job(r.id), keys.request(r.id), keys.queue(r.upstream), key.map { keys.idempotency($0) } ?? ""],
            now: now, [.text(r.id.text), .text(r.upstream), .bytes(request), .text("0")] + RedisRecord.fields(of: r).map { .text($0) }
        ).get()
    }

    /// The jobs claimed (id, attempt) and the interrupted ids.
    func claimAll(now: Int64, limit: Int = 10, lease: Int64 = 1_000, replica: String = "a", max: Int = 1) throws
        -> (claims: [(id: JobID, attempt: Int64)], interrupted: [JobID]) {
        let reply = try client.script(
            RedisScript.claim, keys: [keys.running("u"), keys.queue("u"), keys.delayed("u")], now: now,
            [.number(lease), .number(Int64(limit)), .text(replica), .number(Int64(max))]
        ).get()
        guard let parts = reply.array, parts.count == 2, let failed = parts[0].array, let taken = parts[1].array else {
            throw TestError("claim: \(reply)")
        }
        var claims: [(id: JobID, attempt: Int64)] = []
        for item in taken {
            guard let f = item.array, f.count == 4, let id = f[0].string.flatMap({ JobID($0) }) else { throw TestError("claim: \(item)") }
            // The claimed job's request comes with it: dispatch needs no second read.
            #expect(f[2].bytes.flatMap(RedisRecord.request)?.body == .inline(Array("hello".utf8)))
            #expect(f[3].array?.isEmpty == false)
            claims.append((id, f[1].integer ?? -1))
        }
        return (claims, failed.compactMap { $0.string.flatMap { JobID($0) } })
    }

    /// One claim: {id or nil, attempt, interrupted ids}.
    func claim(now: Int64, limit: Int = 10, lease: Int64 = 1_000, replica: String = "a") throws
        -> (id: JobID?, attempt: Int64, interrupted: [JobID]) {
        let c = try claimAll(now: now, limit: limit, lease: lease, replica: replica)
        return (c.claims.first?.id, c.claims.first?.attempt ?? -1, c.interrupted)
    }

    func renew(_ ids: [JobID], now: Int64, replica: String = "a") throws -> (lost: [JobID], canceled: [JobID]) {
        let reply = try client.script(RedisScript.renew, keys: [keys.running("u")], now: now,
                                      [.number(1_000), .text(replica)] + ids.map { .text($0.text) }).get()
        let words = reply.array?.compactMap(\.string) ?? []
        let split = words.firstIndex(of: "") ?? words.count
        return (words[..<split].compactMap { JobID($0) }, words[split...].dropFirst().compactMap { JobID($0) })
    }

    func finish(_ id: JobID, attempt: Int64, outcome: String, now: Int64, replica: String = "a", retryAt: Int64 = 0,
                response: [UInt8] = [], fields: [String] = []) throws -> Int64? {
        try client.script(
            RedisScript.finish, keys: [keys.job(id), keys.running("u"), keys.response(id), keys.delayed("u")], now: now,
            [.text(id.text), .text(replica), .number(attempt), .text(outcome), .number(retryAt), .bytes(response)]
                + fields.map { .text($0) }
        ).get().integer
    }

    func cancel(_ id: JobID, now: Int64) throws -> String? {
        try client.script(RedisScript.cancel, keys: [keys.job(id), keys.queue("u"), keys.delayed("u")], now: now,
                          [.text(id.text)]).get().string
    }

    func load(_ id: JobID) throws -> JobRecord? {
        RedisRecord.record(id: id, from: try client.run("HGETALL", keys.job(id)).get())
    }

    func integer(_ words: String...) throws -> Int64? {
        try client.runAll([words])[0].get().integer
    }
}

/// The Redis store's scripts against a real redis-server: each is one
/// atomic step of the job lifecycle shared by replicas (SPEC §5b).
@Suite(.serialized) struct RedisScriptTests {
    /// One claim takes several jobs (one durable write for all), oldest
    /// first, never more than `max` nor beyond the upstream's `limit`.
    @Test func aClaimTakesUpToMaxJobsWithinTheLimit() throws {
        let f = try Fixture()
        let jobs = (0..<5).map { _ in f.record() }
        for j in jobs { #expect(try f.create(j) == .null) }
        let first = try f.claimAll(now: 2_000, limit: 3, max: 2)
        #expect(first.claims.map(\.id) == [jobs[0].id, jobs[1].id])
        let second = try f.claimAll(now: 2_001, limit: 3, max: 5)
        #expect(second.claims.map(\.id) == [jobs[2].id], "the limit, 3, is reached")
        #expect(try f.integer("ZCARD", f.keys.running("u")) == 3)
        #expect(try f.integer("LLEN", f.keys.queue("u")) == 2)
    }

    @Test func aJobIsCreatedQueuedClaimedAndFinished() throws {
        let f = try Fixture()
        let a = f.record(), b = f.record()
        #expect(try f.create(a) == .null)
        #expect(try f.create(b) == .null)
        #expect(try f.load(a.id) == a)
        #expect(try f.integer("LLEN", f.keys.queue("u")) == 2)
        let request = try f.client.run("GET", f.keys.request(a.id)).get().bytes.flatMap(RedisRecord.request)
        #expect(request?.body == .inline(Array("hello".utf8)))
        #expect(request?.declaresBody == true)

        // One slot: the oldest is claimed, the next waits for the slot.
        let first = try f.claim(now: 2_000, limit: 1)
        #expect(first.id == a.id && first.attempt == 1)
        #expect(try f.claim(now: 2_001, limit: 1).id == nil)
        let running = try f.load(a.id)
        #expect(running?.status == .running && running?.attempts == 1 && running?.startedAt == 2_000)

        let response = RedisRecord.encode(JobResponse(status: 201, reason: Array("Created".utf8), headers: Array("X-A: b\r\n".utf8), body: .empty),
                                          body: [0, 1, 2])
        #expect(try f.finish(a.id, attempt: 1, outcome: "completed", now: 3_000, response: response,
                             fields: ["response_status", "201", "response_size", "3"]) == 1)
        let done = try f.load(a.id)
        #expect(done?.status == .completed && done?.completedAt == 3_000 && done?.responseStatus == 201)
        let stored = try f.client.run("GET", f.keys.response(a.id)).get().bytes.flatMap(RedisRecord.response)
        #expect(stored == JobResponse(status: 201, reason: Array("Created".utf8), headers: Array("X-A: b\r\n".utf8), body: .inline([0, 1, 2])))
        // Every key of an ended job expires with result_ttl (60 s here).
        for key in [f.keys.job(a.id), f.keys.request(a.id), f.keys.response(a.id)] {
            let ttl = try f.integer("PTTL", key) ?? -1
            #expect(ttl > 50_000 && ttl <= 60_000, "\(key): \(ttl)")
        }
        // The slot came back: the second job runs.
        #expect(try f.claim(now: 3_001, limit: 1).id == b.id)
    }

    @Test func anIdempotencyKeyGivesBackItsJobAndWritesNothing() throws {
        let f = try Fixture()
        let a = f.record(), again = f.record()
        #expect(try f.create(a, key: "k1") == .null)
        #expect(try f.create(again, key: "k1") == .bulk(Array(a.id.text.utf8)))
        #expect(try f.integer("EXISTS", f.keys.job(again.id)) == 0)
        #expect(try f.integer("LLEN", f.keys.queue("u")) == 1)
        // The key lives as long as its job: set to expire when the job ends.
        let claimed = try f.claim(now: 2_000)
        #expect(try f.finish(a.id, attempt: claimed.attempt, outcome: "failed", now: 2_500, fields: ["error", "upstream_timeout"]) == 1)
        let ttl = try f.integer("PTTL", f.keys.idempotency("k1")) ?? -1
        #expect(ttl > 50_000 && ttl <= 60_000)
    }

    /// The restart rule at a lapsed lease: a resendable job is sent again
    /// with the next attempt, another fails `interrupted`.
    @Test func aLapsedClaimIsTakenOverByTheRestartRule() throws {
        let f = try Fixture()
        let put = f.record(resendable: true), post = f.record(resendable: false)
        try f.create(put)
        try f.create(post)
        #expect(try f.claim(now: 1_000, lease: 1_000, replica: "a").id == put.id)
        #expect(try f.claim(now: 1_000, lease: 1_000, replica: "a").id == post.id)
        // Before the lease ends nothing moves.
        let early = try f.claim(now: 1_999, replica: "b")
        #expect(early.id == nil && early.interrupted.isEmpty)
        // After it: the POST fails, the PUT is replica b's, attempt 2.
        let late = try f.claim(now: 2_001, replica: "b")
        #expect(late.id == put.id && late.attempt == 2)
        #expect(late.interrupted == [post.id])
        let failed = try f.load(post.id)
        #expect(failed?.status == .failed && failed?.error == .interrupted && failed?.completedAt == 2_001)
        // Replica a learns at its next renewal that the claim is gone, and
        // its late result is refused: one attempt, one sender.
        #expect(try f.renew([put.id], now: 2_002, replica: "a").lost == [put.id])
        #expect(try f.finish(put.id, attempt: 1, outcome: "completed", now: 2_003, replica: "a") == 0)
        #expect(try f.load(put.id)?.status == .running)
        #expect(try f.renew([put.id], now: 2_004, replica: "b").lost.isEmpty)
        #expect(try f.finish(put.id, attempt: 2, outcome: "completed", now: 2_005, replica: "b") == 1)
    }

    @Test func renewalsKeepALongJobFromBeingTakenOver() throws {
        let f = try Fixture()
        let a = f.record()
        try f.create(a)
        #expect(try f.claim(now: 1_000, lease: 1_000).id == a.id)
        // Renewed every 500 ms for 10 s: never lapses.
        for t in stride(from: Int64(1_500), through: 11_000, by: 500) {
            #expect(try f.renew([a.id], now: t).lost.isEmpty)
            let other = try f.claim(now: t + 1, replica: "b")
            #expect(other.id == nil && other.interrupted.isEmpty)
        }
        #expect(try f.load(a.id)?.attempts == 1)
    }

    @Test func cancelingAQueuedJobTakesItOutOfTheQueue() throws {
        let f = try Fixture()
        let a = f.record(callback: "http://hooks.test/x")
        try f.create(a)
        #expect(try f.cancel(a.id, now: 1_500) == "queued")
        let canceled = try f.load(a.id)
        #expect(canceled?.status == .canceled && canceled?.completedAt == 1_500)
        // Nothing to deliver for a canceled job: its callback fails.
        #expect(canceled?.callback?.status == .failed)
        #expect(try f.integer("ZCARD", f.keys.callbacks) == 0)
        #expect(try f.claim(now: 2_000).id == nil)
        #expect(try f.cancel(JobID.random(), now: 2_000) == nil)
    }

    /// A running job is canceled at once for every replica; its own replica
    /// learns it (pub/sub, or its next renewal) and aborts; its claim, and
    /// so its slot, stays until then.
    @Test func cancelingARunningJobTellsItsReplicaAndKeepsTheSlotUntilItStops() throws {
        let f = try Fixture()
        let a = f.record(), b = f.record()
        try f.create(a)
        try f.create(b)
        #expect(try f.claim(now: 1_000, limit: 1).id == a.id)
        #expect(try f.cancel(a.id, now: 1_100) == "running")
        #expect(try f.load(a.id)?.status == .canceled)
        #expect(try f.claim(now: 1_200, limit: 1).id == nil)
        let renewal = try f.renew([a.id], now: 1_300)
        #expect(renewal.lost.isEmpty && renewal.canceled == [a.id])
        // The aborted exchange's end gives the slot back; the job stays canceled.
        #expect(try f.finish(a.id, attempt: 1, outcome: "failed", now: 1_400) == 2)
        #expect(try f.load(a.id)?.status == .canceled)
        #expect(try f.claim(now: 1_500, limit: 1).id == b.id)
    }

    @Test func aRetryWaitsOutItsBackoffOutsideTheSlots() throws {
        let f = try Fixture()
        let a = f.record()
        try f.create(a)
        #expect(try f.claim(now: 1_000, limit: 1).attempt == 1)
        #expect(try f.finish(a.id, attempt: 1, outcome: "retry", now: 1_100, retryAt: 1_600, fields: ["error", "upstream_reset"]) == 1)
        #expect(try f.load(a.id)?.status == .queued)
        #expect(try f.integer("ZCARD", f.keys.running("u")) == 0)
        #expect(try f.claim(now: 1_500, limit: 1).id == nil)
        let again = try f.claim(now: 1_600, limit: 1)
        #expect(again.id == a.id && again.attempt == 2)
    }

    @Test func anEndedJobsCallbackBecomesDue() throws {
        let f = try Fixture()
        let a = f.record(callback: "https://hooks.test/x")
        try f.create(a)
        #expect(try f.load(a.id)?.callback?.status == .waiting)
        _ = try f.claim(now: 1_000)
        #expect(try f.finish(a.id, attempt: 1, outcome: "completed", now: 2_000) == 1)
        let done = try f.load(a.id)
        #expect(done?.callback?.status == .pending && done?.callback?.nextAttemptAt == 2_000)
        #expect(try f.client.run("ZSCORE", f.keys.callbacks, a.id.text).get().string == "2000")
    }

    /// A Redis restarted without persistence has no scripts: they are sent whole.
    @Test func scriptsAreSentWholeWhenRedisDoesNotHaveThem() throws {
        let f = try Fixture()
        try f.create(f.record())
        #expect(try f.client.run("SCRIPT", "FLUSH").get() == .status("OK"))
        #expect(try f.create(f.record()) == .null)
        #expect(try f.integer("LLEN", f.keys.queue("u")) == 2)
    }

    @Test func everyFieldOfARecordSurvivesTheHash() throws {
        let f = try Fixture()
        var r = JobRecord(
            id: .random(), status: .failed, upstream: "u", route: "reports", method: "POST", path: "/a?b=c",
            createdAt: 1, startedAt: 2, completedAt: 3, attempts: 4, resendable: false, credential: [0, 0xFF, 0x10],
            idempotencyKey: "key with spaces", fingerprint: Array(repeating: 0xAB, count: 32),
            callback: JobCallback(url: "https://h/x", status: .pending, attempts: 2, round: 3, lastError: "http_500",
                                  nextAttemptAt: 99))
        r.contentType = "application/json"
        r.error = .upstreamTimeout
        r.errorMessage = "no answer in 15m"
        r.responseStatus = 504
        r.responseSize = 12
        var hset = ["HSET", f.keys.job(r.id)]
        hset += RedisRecord.fields(of: r)
        _ = try f.client.runAll([hset])[0].get()
        #expect(try f.load(r.id) == r)
        #expect(try f.load(JobID.random()) == nil)
    }
}

/// The encodings of bodies, without a server.
@Suite struct RedisRecordEncodingTests {
    @Test func requestsAndResponsesRoundTrip() {
        let head = Array("POST /x HTTP/1.1\r\nX: y\r\n".utf8)
        let body: [UInt8] = (0..<300).map { UInt8($0 & 0xFF) }
        for declares in [true, false] {
            let encoded = RedisRecord.encode(JobRequest(head: head, body: .empty, declaresBody: declares), body: body)
            #expect(RedisRecord.request(from: encoded) == JobRequest(head: head, body: .inline(body), declaresBody: declares))
        }
        let response = JobResponse(status: 599, reason: [], headers: Array("A: b\r\n".utf8), body: .empty)
        let encoded = RedisRecord.encode(response, body: body)
        #expect(RedisRecord.response(from: encoded) == JobResponse(status: 599, reason: [], headers: response.headers, body: .inline(body)))
        // Truncated or foreign bytes are no body at all.
        #expect(RedisRecord.request(from: Array(encoded.prefix(3))) == nil)
        #expect(RedisRecord.response(from: [0, 200, 0, 9, 65]) == nil)
        #expect(RedisRecord.request(from: [7, 0, 0, 0, 0]) == nil)
    }
}
