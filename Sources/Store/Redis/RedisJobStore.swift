public import Loop
public import Meters
import Synchronization

/// `store: "redis://..."` (SPEC §5b): jobs shared by every replica on one
/// Redis. Each loop has its own connection (no loop waits for another's
/// replies, none blocks on Redis); every operation is asked on a loop and
/// answered there. Each step of a job's life is one script (`RedisScript`),
/// so replicas never see half of one.
///
/// Not a `JobStore`: that protocol's callers keep every job in memory (the
/// job table) and only make it durable here; with replicas the truth is in
/// Redis and this replica keeps only what it is running. The jobs layer
/// talks to this store directly.
public final class RedisJobStore: Sendable {
    public struct Settings: Sendable, Equatable {
        public var endpoint: RedisEndpoint
        public var prefix: String
        /// A running job's claim; renewed at a third of it.
        public var lease: Duration
        /// > 0: each new job waits for that many Redis replicas (`WAIT`).
        public var waitReplicas: Int
        public var resultTTL: Duration
        /// Deadline of every command (and of `WAIT`, less a margin).
        public var commandTimeout: Duration

        public init(endpoint: RedisEndpoint, prefix: String = "coatcheck", lease: Duration = .seconds(30),
                    waitReplicas: Int = 0, resultTTL: Duration = .seconds(86_400), commandTimeout: Duration = .seconds(2)) {
            self.endpoint = endpoint
            self.prefix = prefix
            self.lease = lease
            self.waitReplicas = waitReplicas
            self.resultTTL = resultTTL
            self.commandTimeout = commandTimeout
        }
    }

    public enum Created: Sendable, Equatable {
        case created
        /// The Idempotency-Key belongs to this job (nil: it expired meanwhile).
        case existing(JobRecord?)
    }

    /// A job this replica now runs: its record (attempt counted, `running`)
    /// and what to send.
    public struct Claim: Sendable, Equatable {
        public var record: JobRecord
        public var request: JobRequest
    }

    public enum Outcome: Sendable {
        case completed(JobResponse, body: [UInt8])
        case failed
        /// Queued again, due at Unix milliseconds `at`.
        case retry(at: Int64)
    }

    public enum Finished: Sendable, Equatable {
        case written
        /// Canceled while it ran: it stays canceled.
        case canceled
        /// The claim had lapsed and another replica owns the job now: nothing written.
        case lost
    }

    public let settings: Settings
    public let keys: RedisKeys
    /// Names this process in claims (`owner`): unique per start.
    public let replica: String
    private let loops: [EventLoop]
    private let connections: [Slot]
    private let ready = Atomic<Int>(0)

    /// One loop's connection, touched only on that loop, and the meters it
    /// writes (one writer each: SPEC §7, no lock shared between loops).
    private final class Slot: @unchecked Sendable {
        var connection: RedisConnection?
        var isReady = false
        let meters = MeterTable(capacity: 256)
    }

    /// `coatcheck_store_commit_duration_seconds{store="redis"}` (a job's
    /// write, an attempt's end) and this replica's `jobs_finished_total`,
    /// `job_duration_seconds`, `job_retries_total`: one table per loop.
    public var meters: [MeterTable] { connections.map(\.meters) }

    /// The jobs in Redis by state, for `coatcheck_jobs` and
    /// `coatcheck_webhook_pending`, as last counted (`count`).
    public struct Counts: Sendable, Equatable {
        public var queued = 0, running = 0, pendingCallbacks = 0
    }
    private let lastCounts = Mutex<Counts?>(nil)
    public var counts: Counts? { lastCounts.withLock { $0 } }

    public init(settings: Settings, loops: [EventLoop], replica: String) {
        self.settings = settings
        self.keys = RedisKeys(prefix: settings.prefix)
        self.replica = replica
        self.loops = loops
        connections = loops.map { _ in Slot() }
    }

    /// Connects every loop (each on its own thread); `onChange` hears of
    /// each connection made or lost, on its loop, for the log.
    public func start(onChange: @escaping @Sendable (Int, RedisConnection.Change) -> Void = { _, _ in }) {
        for (i, loop) in loops.enumerated() {
            let slot = connections[i]
            loop.execute { [self] in
                let c = RedisConnection(loop: loop, endpoint: settings.endpoint, commandTimeout: settings.commandTimeout) { change in
                    let now = change == .ready
                    if now != slot.isReady {
                        slot.isReady = now
                        self.ready.wrappingAdd(now ? 1 : -1, ordering: .relaxed)
                    }
                    onChange(i, change)
                }
                slot.connection = c
                c.start()
            }
        }
    }

    /// Every loop's connection is up (`/readyz`).
    public var isHealthy: Bool { ready.load(ordering: .relaxed) == loops.count }

    /// Closes the connections; each on its loop.
    public func close() {
        for (i, loop) in loops.enumerated() {
            let slot = connections[i]
            try? loop.submitAndWait {
                slot.connection?.close()
                slot.connection = nil
            }
        }
    }

    private func meters(_ loop: EventLoop) -> MeterTable { connections[loop.index].meters }

    /// A job that ended here (or was failed `interrupted` by a claim here):
    /// `jobs_finished_total` and `job_duration_seconds`.
    private func meterEnd(_ r: JobRecord, _ status: JobStatus, now: Int64, on loop: EventLoop) {
        let m = meters(loop), slot = MeterLabels.slot(upstream: r.upstream)
        m.add(MeterKey(.jobsFinished, slot: slot, status.ordinal))
        m.observe(.jobDuration, slot: slot, .jobDuration, nanos: UInt64(max(0, now - r.createdAt)) * 1_000_000)
    }

    /// Counts the jobs in Redis by state (all replicas'), for the gauges;
    /// asked every few seconds by one loop.
    public func count(upstreams: [String], on loop: EventLoop) {
        run(RedisScript.counts, keys: [], upstreams.map { .text($0) }, now: wallClockMillis(), on: loop) { [self] result in
            guard case .success(let reply) = result, let n = reply.array?.compactMap(\.integer), n.count == 3 else { return }
            lastCounts.withLock { $0 = Counts(queued: Int(n[0]), running: Int(n[1]), pendingCallbacks: Int(n[2])) }
        }
    }

    private func connection(_ loop: EventLoop) -> RedisConnection? {
        loop.preconditionInEventLoop()
        return connections[loop.index].connection
    }

    private var ttlMillis: Int64 { settings.resultTTL.nanoseconds / 1_000_000 }

    private func run(_ script: RedisScript, keys: [String], _ arguments: [RedisArgument], now: Int64, on loop: EventLoop,
                     _ done: @escaping (Result<RedisValue, RedisUnavailable>) -> Void) {
        guard let c = connection(loop) else { return done(.failure(RedisUnavailable("not started"))) }
        c.run(script, keys: keys, prefix: settings.prefix, now: now, ttlMillis: ttlMillis, arguments) { result in
            if case .success(.error(let message)) = result {
                // A script error is a bug or a foreign key in our prefix: no answer to act on.
                return done(.failure(RedisUnavailable("\(script.name): \(message)")))
            }
            done(result)
        }
    }

    // MARK: The job's life

    /// Writes a new job and queues it, once Redis (and `wait_replicas`
    /// replicas) has it. `keyIndex`: its Idempotency-Key's index, if any.
    /// `claimed`: the job's first attempt runs here already (`record` says
    /// `running`); it is written claimed by this replica instead of queued.
    ///
    /// With `wait_replicas`, a queued job is written held (no replica may
    /// run it) and released once `WAIT` says enough replicas have it; short
    /// of them it is taken back, and a held job this process could not
    /// release expires by itself: a job whose client heard 503 never runs.
    public func create(_ record: JobRecord, request: JobRequest, body: [UInt8], keyIndex: String?, claimed: Bool = false,
                       on loop: EventLoop, _ done: @escaping (Result<Created, RedisUnavailable>) -> Void) {
        let fields = RedisRecord.fields(of: record).map { RedisArgument.text($0) }
        let requestBytes = RedisArgument.bytes(RedisRecord.encode(request, body: body))
        let keyName = keyIndex.map { keys.idempotency($0) } ?? ""
        let held = !claimed && settings.waitReplicas > 0
        let script: RedisScript, scriptKeys: [String], arguments: [RedisArgument]
        if claimed {
            script = RedisScript.createClaimed
            scriptKeys = [keys.job(record.id), keys.request(record.id), keys.running(record.upstream), keyName]
            arguments = [.text(record.id.text), .number(settings.lease.nanoseconds / 1_000_000), .text(replica), requestBytes]
                + fields
        } else {
            script = RedisScript.create
            scriptKeys = [keys.job(record.id), keys.request(record.id), keys.queue(record.upstream), keyName]
            arguments = [.text(record.id.text), .text(record.upstream), requestBytes, .text(held ? "1" : "0")] + fields
        }
        let began = monotonicNanos()
        run(script, keys: scriptKeys, arguments, now: record.createdAt, on: loop) { [self] result in
            switch result {
            case .failure(let e): done(.failure(e))
            case .success(.null):
                waitForReplicas(on: loop) { [self] unavailable in
                    if let unavailable {
                        // Not acknowledged: the client hears 503, so the job must not run.
                        withdraw(record, on: loop)
                        return done(.failure(unavailable))
                    }
                    let acknowledged = { [self] in
                        meters(loop).observe(.storeCommit, slot: StoreKind.redis.rawValue, .storeCommit,
                                             nanos: monotonicNanos() &- began)
                        done(.success(.created))
                    }
                    guard held else { return acknowledged() }
                    run(RedisScript.release, keys: scriptKeys, [.text(record.id.text), .text(record.upstream)],
                        now: wallClockMillis(), on: loop) { released in
                        switch released {
                        case .success(.integer(1)): acknowledged()
                        case .success: done(.failure(RedisUnavailable("the job expired before its release")))
                        case .failure(let e): done(.failure(e))
                        }
                    }
                }
            case .success(let other):
                guard let id = other.string.flatMap({ JobID($0) }) else {
                    return done(.failure(RedisUnavailable("create: unexpected reply")))
                }
                lookup(id, on: loop) { done($0.map { .existing($0) }) }
            }
        }
    }

    /// Takes back a job written but not acknowledged (best effort: with no
    /// connection, nothing can be).
    private func withdraw(_ record: JobRecord, on loop: EventLoop) {
        let id = record.id
        run(RedisScript.withdraw, keys: [keys.job(id), keys.request(id), keys.response(id), keys.queue(record.upstream),
                                         keys.delayed(record.upstream), keys.running(record.upstream)],
            [.text(id.text)], now: wallClockMillis(), on: loop) { _ in }
    }

    /// `WAIT` for `wait_replicas` replicas; nil when they have it.
    private func waitForReplicas(on loop: EventLoop, _ done: @escaping (RedisUnavailable?) -> Void) {
        let n = settings.waitReplicas
        guard n > 0, let c = connection(loop) else { return done(nil) }
        var wait = RedisCommand("WAIT")
        wait.append(n)
        // Under the command deadline, so a missing replica is this answer, not a lost connection.
        wait.append(max(1, settings.commandTimeout.nanoseconds / 2_000_000))
        c.send(wait) { result in
            switch result {
            case .success(.integer(let got)) where got >= n: done(nil)
            case .success(.integer(let got)): done(RedisUnavailable("\(got) of \(n) Redis replicas acknowledged the job"))
            case .success(let other): done(RedisUnavailable("WAIT: \(other.errorMessage ?? "unexpected reply")"))
            case .failure(let e): done(e)
            }
        }
    }

    /// The job as it is now (nil: unknown, or expired and gone).
    public func lookup(_ id: JobID, on loop: EventLoop, _ done: @escaping (Result<JobRecord?, RedisUnavailable>) -> Void) {
        guard let c = connection(loop) else { return done(.failure(RedisUnavailable("not started"))) }
        var command = RedisCommand("HGETALL")
        command.append(keys.job(id))
        c.send(command, decode: { RedisRecord.record(id: id, reply: $0) }, done)
    }

    /// The job an Idempotency-Key (by its index) names now, if any.
    public func job(forKey keyIndex: String, on loop: EventLoop,
                    _ done: @escaping (Result<JobRecord?, RedisUnavailable>) -> Void) {
        get(keys.idempotency(keyIndex), on: loop) { [self] result in
            switch result {
            case .failure(let e): done(.failure(e))
            case .success(let bytes):
                guard let id = bytes.flatMap({ JobID(String(decoding: $0, as: UTF8.self)) }) else { return done(.success(nil)) }
                lookup(id, on: loop, done)
            }
        }
    }

    public func response(of id: JobID, on loop: EventLoop, _ done: @escaping (Result<JobResponse?, RedisUnavailable>) -> Void) {
        get(keys.response(id), on: loop) { done($0.map { $0.flatMap(RedisRecord.response) }) }
    }

    public func request(of id: JobID, on loop: EventLoop, _ done: @escaping (Result<JobRequest?, RedisUnavailable>) -> Void) {
        get(keys.request(id), on: loop) { done($0.map { $0.flatMap(RedisRecord.request) }) }
    }

    private func get(_ key: String, on loop: EventLoop, _ done: @escaping (Result<[UInt8]?, RedisUnavailable>) -> Void) {
        guard let c = connection(loop) else { return done(.failure(RedisUnavailable("not started"))) }
        var command = RedisCommand("GET")
        command.append(key)
        c.send(command) { result in done(result.map(\.bytes)) }
    }

    /// Claims up to `max` jobs of `upstream` while fewer than `limit` are
    /// claimed across the replicas (none: none to run, or no slot).
    /// `interrupted`: jobs of a dead replica failed by the restart rule meanwhile.
    public func claim(upstream: String, limit: Int, max: Int = 1, now: Int64, on loop: EventLoop,
                      _ done: @escaping (Result<(claims: [Claim], interrupted: [JobID]), RedisUnavailable>) -> Void) {
        let leaseMillis = settings.lease.nanoseconds / 1_000_000
        run(RedisScript.claim, keys: [keys.running(upstream), keys.queue(upstream), keys.delayed(upstream)],
            [.number(leaseMillis), .number(Int64(limit)), .text(replica), .number(Int64(max))], now: now, on: loop) { result in
            done(result.flatMap { reply in
                guard let parts = reply.array, parts.count == 2, let failed = parts[0].array, let taken = parts[1].array else {
                    return .failure(RedisUnavailable("claim: unexpected reply"))
                }
                let interrupted = failed.compactMap { $0.string.flatMap { JobID($0) } }
                for _ in interrupted {
                    self.meters(loop).add(MeterKey(.jobsFinished, slot: MeterLabels.slot(upstream: upstream),
                                                   JobStatus.failed.ordinal))
                }
                var claims: [Claim] = []
                for item in taken {
                    guard let fields = item.array, fields.count == 4, let id = fields[0].string.flatMap({ JobID($0) }),
                          let record = RedisRecord.record(id: id, from: fields[3]),
                          let request = fields[2].bytes.flatMap(RedisRecord.request) else {
                        return .failure(RedisUnavailable("claim: a claimed job is incomplete in Redis"))
                    }
                    claims.append(Claim(record: record, request: request))
                }
                return .success((claims, interrupted))
            })
        }
    }

    /// Extends this replica's claims on `ids`. `lost`: claims gone (stop
    /// those exchanges); `canceled`: jobs canceled on some replica (abort).
    public func renew(_ ids: [JobID], upstream: String, now: Int64, on loop: EventLoop,
                      _ done: @escaping (Result<(lost: [JobID], canceled: [JobID]), RedisUnavailable>) -> Void) {
        let leaseMillis = settings.lease.nanoseconds / 1_000_000
        run(RedisScript.renew, keys: [keys.running(upstream)],
            [.number(leaseMillis), .text(replica)] + ids.map { .text($0.text) }, now: now, on: loop) { result in
            done(result.map { reply in
                let words = reply.array?.compactMap(\.string) ?? []
                let split = words.firstIndex(of: "") ?? words.count
                return (words[..<split].compactMap { JobID($0) }, words[split...].dropFirst().compactMap { JobID($0) })
            })
        }
    }

    /// Writes an attempt's end while this replica still holds the claim
    /// for `record.attempts`. `record` carries the fields to write (the
    /// response's status and size, the error).
    public func finish(_ record: JobRecord, _ outcome: Outcome, now: Int64, on loop: EventLoop,
                       _ done: @escaping (Result<Finished, RedisUnavailable>) -> Void) {
        let id = record.id
        var fields: [String] = []
        func add(_ name: String, _ value: String?) { if let value { fields += [name, value] } }
        add("error", record.error?.rawValue)
        add("error_message", record.errorMessage)
        add("response_status", record.responseStatus.map { String($0) })
        add("response_size", record.responseSize.map { String($0) })
        add("content_type", record.contentType)
        let word: String, retryAt: Int64, response: [UInt8]
        switch outcome {
        case .completed(let r, let body): (word, retryAt, response) = ("completed", 0, RedisRecord.encode(r, body: body))
        case .failed: (word, retryAt, response) = ("failed", 0, [])
        case .retry(let at): (word, retryAt, response) = ("retry", at, [])
        }
        let began = monotonicNanos()
        run(RedisScript.finish, keys: [keys.job(id), keys.running(record.upstream), keys.response(id), keys.delayed(record.upstream)],
            [.text(id.text), .text(replica), .number(Int64(record.attempts)), .text(word), .number(retryAt), .bytes(response)]
                + fields.map { .text($0) }, now: now, on: loop) { [self] result in
            let finished = result.flatMap { reply -> Result<Finished, RedisUnavailable> in
                switch reply.integer {
                case 1: return .success(.written)
                case 2: return .success(.canceled)
                case 0: return .success(.lost)
                default: return .failure(RedisUnavailable("finish: unexpected reply"))
                }
            }
            if case .success(.written) = finished {
                meters(loop).observe(.storeCommit, slot: StoreKind.redis.rawValue, .storeCommit, nanos: monotonicNanos() &- began)
                switch outcome {
                case .completed: meterEnd(record, .completed, now: now, on: loop)
                case .failed: meterEnd(record, .failed, now: now, on: loop)
                case .retry: meters(loop).add(MeterKey(.jobRetries, slot: MeterLabels.slot(upstream: record.upstream)))
                }
            }
            done(finished)
        }
    }

    /// Cancels a job that has not ended; the status it had (nil: unknown).
    public func cancel(_ record: JobRecord, now: Int64, on loop: EventLoop,
                       _ done: @escaping (Result<JobStatus?, RedisUnavailable>) -> Void) {
        run(RedisScript.cancel, keys: [keys.job(record.id), keys.queue(record.upstream), keys.delayed(record.upstream)],
            [.text(record.id.text)], now: now, on: loop) { [self] result in
            let had = result.map { $0.string.flatMap(JobStatus.init(rawValue:)) }
            if case .success(let s?) = had, !s.isTerminal { meterEnd(record, .canceled, now: now, on: loop) }
            done(had)
        }
    }

    /// Deletes an ended job and everything of it; whether it existed.
    public func remove(_ id: JobID, now: Int64, on loop: EventLoop, _ done: @escaping (Result<Bool, RedisUnavailable>) -> Void) {
        run(RedisScript.remove, keys: [keys.job(id), keys.request(id), keys.response(id)], [], now: now, on: loop) { result in
            done(result.map { $0.integer == 1 })
        }
    }
    // MARK: Webhook deliveries

    public enum DeliveryOutcome: Sendable, Equatable {
        case delivered
        case failed
        /// Due again at Unix milliseconds `at`.
        case retry(at: Int64)
    }

    /// Takes up to `max` due deliveries for this replica, each held for
    /// `lease` (longer than an attempt's `callback.timeout`, or a slow
    /// attempt's delivery is taken by another replica and sent twice).
    public func claimDeliveries(max: Int, lease: Duration, now: Int64, on loop: EventLoop,
                                _ done: @escaping (Result<[JobRecord], RedisUnavailable>) -> Void) {
        run(RedisScript.claimDeliveries, keys: [keys.callbacks],
            [.number(lease.nanoseconds / 1_000_000), .text(replica), .number(Int64(max))], now: now, on: loop) { result in
            done(result.map { reply in
                let items = reply.array ?? []
                var records: [JobRecord] = []
                var i = 0
                while i + 1 < items.count {
                    if let id = items[i].string.flatMap({ JobID($0) }), let r = RedisRecord.record(id: id, from: items[i + 1]) {
                        records.append(r)
                    }
                    i += 2
                }
                return records
            })
        }
    }

    /// An attempt's outcome for the delivery round `round` this replica
    /// holds; false when it no longer holds it (nothing written).
    public func finishDelivery(_ id: JobID, round: Int, _ outcome: DeliveryOutcome, attempts: Int, lastError: String?,
                               now: Int64, on loop: EventLoop, _ done: @escaping (Result<Bool, RedisUnavailable>) -> Void) {
        let word: String, nextAt: Int64
        switch outcome {
        case .delivered: (word, nextAt) = ("delivered", 0)
        case .failed: (word, nextAt) = ("failed", 0)
        case .retry(let at): (word, nextAt) = ("retry", at)
        }
        run(RedisScript.finishDelivery, keys: [keys.job(id), keys.callbacks],
            [.text(id.text), .text(replica), .number(Int64(round)), .text(word), .number(Int64(attempts)), .number(nextAt),
             .text(lastError ?? "")], now: now, on: loop) { result in
            done(result.map { $0.integer == 1 })
        }
    }

    /// Re-arms an ended job's finished delivery: the new round (0: nothing
    /// to re-arm yet, its job runs or its delivery is pending; nil: no such
    /// job or no callback).
    public func rearm(_ id: JobID, now: Int64, on loop: EventLoop, _ done: @escaping (Result<Int?, RedisUnavailable>) -> Void) {
        run(RedisScript.rearm, keys: [keys.job(id), keys.callbacks], [.text(id.text)], now: now, on: loop) { result in
            done(result.map { $0.integer.map { Int($0) } })
        }
    }
}
