public import Loop
public import Meters
import Synchronization

/// Every live job's record, shared by all loops: what the status endpoint
/// reads (without touching the store), where long polls wait, where a
/// running job's abort hook is found, and the Idempotency-Key index.
///
/// Two views of each job: `latest`, the state transitions are checked
/// against (so a cancel and a completion racing on two loops resolve to
/// one winner), and `visible`, the last state the store made durable,
/// which is all clients ever see. Writes reach the store in the order they
/// were applied and its callbacks come back in that order, so `visible`
/// only moves forward.
public final class JobTable: Sendable {
    public let store: any JobStore

    struct Waiter {
        let token: Int
        let loop: EventLoop
        let wake: @Sendable () -> Void
    }

    /// One job. A class: the dictionary holds a word per job (it is sized
    /// for 100,000s of queued jobs), and updates happen in place.
    final class Entry {
        var visible: JobRecord
        /// Ahead of `visible` while writes are in flight: the state the
        /// next transition is checked against. Boxed, so a job at rest
        /// pays one word for it.
        var ahead: Ahead?
        var waiters: [Waiter] = []
        /// Set while an exchange runs for the job: aborts it on its loop.
        var abort: (loop: EventLoop, run: @Sendable () -> Void)?
        /// Set while the job waits for an upstream slot: takes it out of
        /// the queue (DELETE), so a canceled job holds no place there.
        var withdraw: WithdrawHook?
        /// A queued job's request, kept from its insert to its dispatch (within
        /// `requestCacheBytes`), so dispatch need not read it back from the store.
        var request: JobRequest?

        init(_ record: JobRecord) { visible = record }

        var latest: JobRecord { ahead?.record ?? visible }

        /// `r` written and not yet back from the store: the next change is
        /// checked against it.
        func stage(_ r: JobRecord) {
            if let ahead {
                ahead.record = r
                ahead.writes += 1
            } else {
                ahead = Ahead(r)
            }
        }
    }

    final class Ahead {
        var record: JobRecord
        /// Writes applied and not yet back from the store.
        var writes = 1
        init(_ record: JobRecord) { self.record = record }
    }

    /// What durations are observed per: a route (its label) and a method,
    /// so a fast endpoint never speaks for a slow one (SPEC §4).
    public struct Workload: Hashable, Sendable {
        public var route: String
        public var method: String
        public init(route: String, method: String) {
            self.route = route
            self.method = method
        }
    }

    /// Exponentially weighted job durations per workload, for estimates.
    struct Observed {
        var meanMillis: Double = 0
        var samples = 0
    }

    struct State {
        var jobs = JobIDMap<Entry>()
        /// Idempotency-Key -> job; `nil` value while the job's insert is in flight.
        var keys: [String: JobID?] = [:]
        var observed: [Workload: Observed] = [:]
        var nextToken = 1
        /// What the entries' kept requests hold, by `cost(of:)`.
        var cachedRequestBytes = 0
        /// Jobs by status, as visible (`coatcheck_jobs`).
        var statusCounts = [Int](repeating: 0, count: JobStatus.allCases.count)
        /// Visible callbacks still to be delivered (`coatcheck_webhook_pending`).
        var pendingCallbacks = 0
        /// Upstream names' meter slots, looked up once each.
        var upstreamSlots: [String: Int] = [:]

        /// A job becomes visible as `r` (`old`: what it was, if it was).
        mutating func count(_ r: JobRecord, replacing old: JobRecord?) {
            if let old { uncount(old) }
            statusCounts[r.status.ordinal] += 1
            if r.callback?.isPending == true { pendingCallbacks += 1 }
        }

        mutating func uncount(_ r: JobRecord) {
            statusCounts[r.status.ordinal] -= 1
            if r.callback?.isPending == true { pendingCallbacks -= 1 }
        }

        mutating func upstreamSlot(_ name: String) -> Int {
            if let slot = upstreamSlots[name] { return slot }
            let slot = MeterLabels.slot(upstream: name)
            upstreamSlots[name] = slot
            return slot
        }

        mutating func dropRequest(of e: Entry) {
            guard let r = e.request else { return }
            e.request = nil
            cachedRequestBytes -= JobTable.cost(of: r)
        }

        mutating func observe(_ workload: Workload, millis: Int64) {
            var o = observed[workload] ?? Observed()
            let d = Double(max(0, millis))
            o.meanMillis = o.samples == 0 ? d : o.meanMillis * 0.8 + d * 0.2
            o.samples += 1
            observed[workload] = o
        }
    }

    /// Requests kept in memory for dispatch, at most this many bytes in all:
    /// a short queue never reads its requests back; a long one reads those
    /// beyond the budget from the store.
    public static let requestCacheBytes = 16 << 20

    static func cost(of r: JobRequest) -> Int {
        if case .inline(let body) = r.body { return 96 + r.head.count + body.count }
        return 96 + r.head.count
    }

    private let state = Mutex(State())
    /// Jobs finished, their durations and retries, counted when they become
    /// durable: written under `state`'s lock, read by scrapes.
    public let meters = MeterTable(capacity: 2048)
    /// Held from a transition's check to its store submission, so writes
    /// reach the store (and come back) in the order they were applied,
    /// whichever loops race. Never taken inside `state`.
    private let ordering = Mutex(())

    /// Told of each job whose callback became due, once that is durable.
    /// Wrapped: a bare closure in a generic container is re-abstracted, a
    /// thunk deeper, at every read and write back through `withLock`.
    private struct CallbackDue: Sendable { let run: @Sendable (JobRecord, JobResponse?) -> Void }
    private let callbackDue = Mutex<CallbackDue?>(nil)

    public init(store: any JobStore) {
        self.store = store
    }

    /// Sets who is told when a job's end makes its callback due (the
    /// delivery scheduler); called on the store's context.
    /// The response comes along when the job's end wrote one (the deliverer
    /// then need not read it back from the store for the first attempt).
    public func onCallbackDue(_ handler: @escaping @Sendable (JobRecord, JobResponse?) -> Void) {
        callbackDue.withLock { $0 = CallbackDue(run: handler) }
    }

    // MARK: Reading

    /// The job as clients may see it; nil if unknown.
    public func lookup(_ id: JobID) -> JobRecord? {
        state.withLock { $0.jobs[id]?.visible }
    }

    public var count: Int { state.withLock { $0.jobs.count } }

    /// Jobs by visible status, in `JobStatus.allCases` order, and the
    /// callbacks pending delivery: kept as jobs change, not counted here.
    public func gauges() -> (byStatus: [Int], pendingCallbacks: Int) {
        state.withLock { ($0.statusCounts, $0.pendingCallbacks) }
    }

    /// Counts of jobs by visible status.
    public func countsByStatus() -> [JobStatus: Int] {
        state.withLock { s in
            var counts: [JobStatus: Int] = [:]
            s.jobs.forEach { _, e in counts[e.visible.status, default: 0] += 1 }
            return counts
        }
    }

    // MARK: Creating

    public enum KeyClaim: Equatable, Sendable {
        /// The key is new and now reserved for the caller's job.
        case claimed
        /// A job with this key exists: the same request gets it again.
        case existing(JobRecord)
        /// The key belongs to a different request (422), or to one still
        /// being accepted (409).
        case mismatch
        case inFlight
    }

    /// Reserves an Idempotency-Key (`JobRecord.keyIndex(key:credential:)`:
    /// keys are per credential), or finds its job. A job past `ttl` counts
    /// as gone, as it does for every other lookup.
    public func claim(key: String, fingerprint: [UInt8], now: Int64, ttl: Duration) -> KeyClaim {
        let ttlMillis = ttl.nanoseconds / 1_000_000
        return state.withLock { s in
            switch s.keys[key] {
            case .none:
                s.keys[key] = .some(nil)
                return .claimed
            case .some(.none):
                return .inFlight
            case .some(.some(let id)):
                guard let e = s.jobs[id], !e.visible.isExpired(now: now, ttlMillis: ttlMillis) else {
                    s.keys[key] = .some(nil)
                    return .claimed
                }
                return e.visible.fingerprint == fingerprint ? .existing(e.visible) : .mismatch
            }
        }
    }

    /// Gives a reserved key back (the job was not created).
    public func releaseClaim(key: String) {
        state.withLock { s in
            if case .some(.none) = s.keys[key] { s.keys[key] = nil }
        }
    }

    /// Commits a new job; it becomes visible when durable, then `done` runs.
    /// A queued job may come with its `withdraw` hook (see `setWithdraw`),
    /// set with the entry instead of by a second lookup. Given a `loop`, the
    /// entry is made and `done` runs there: the store's thread only hands
    /// them over, so a group commit's callbacks cost its writer little.
    public func insert(_ record: JobRecord, request: JobRequest, withdraw: WithdrawHook? = nil,
                       on loop: EventLoop? = nil, done: @escaping @Sendable (StoreError?) -> Void) {
        store.insert(record, request: request) { [self] error in
            guard let loop else {
                inserted(record, request: request, withdraw: withdraw, error: error)
                done(error)
                return
            }
            loop.execute { [self] in
                inserted(record, request: request, withdraw: withdraw, error: error)
                done(error)
            }
        }
    }

    private func inserted(_ record: JobRecord, request: JobRequest, withdraw: WithdrawHook?,
                          error: StoreError?) {
        state.withLock { s in
            if error != nil {
                if let key = record.keyIndex, case .some(.none) = s.keys[key] { s.keys[key] = nil }
                return
            }
            let e = Entry(record)
            if record.status == .queued {
                e.withdraw = withdraw
                let cost = JobTable.cost(of: request)
                if s.cachedRequestBytes + cost <= JobTable.requestCacheBytes {
                    e.request = request
                    s.cachedRequestBytes += cost
                }
            }
            s.jobs[record.id] = e
            s.count(record, replacing: nil)
            if let key = record.keyIndex { s.keys[key] = .some(record.id) }
        }
    }

    /// Adds jobs read back from the store at startup.
    public func adopt(_ records: [JobRecord]) {
        state.withLock { s in
            for r in records {
                s.count(r, replacing: s.jobs[r.id]?.visible)
                s.jobs[r.id] = Entry(r)
                if let key = r.keyIndex { s.keys[key] = .some(r.id) }
            }
        }
    }

    // MARK: Transitions

    /// Applies `event` to the job's latest state if the lifecycle allows it,
    /// lets `fill` complete the record, and writes it to the store. Returns
    /// the new record, or nil if the job is gone or the event was refused
    /// (e.g. a completion racing a cancel that won). `done` runs once the
    /// write is durable and the new state visible.
    @discardableResult
    public func apply(_ event: JobEvent, to id: JobID, response: JobResponse? = nil,
                      fill: (inout JobRecord) -> Void = { _ in },
                      done: @escaping @Sendable (StoreError?) -> Void = { _ in }) -> JobRecord? {
        ordering.withLock { _ in applyInOrder(event, to: id, response: response, fill: fill, done: done).record }
    }

    /// Returns the new record and, when the job left `running`, the abort
    /// hook it had: taken under the same lock as the transition, so a hook
    /// set a moment earlier is never dropped unrun.
    private func applyInOrder(_ event: JobEvent, to id: JobID, response: JobResponse?,
                              fill: (inout JobRecord) -> Void,
                              done: @escaping @Sendable (StoreError?) -> Void)
        -> (record: JobRecord?, hooks: Hooks) {
        let (updated, hooks): (JobRecord?, Hooks) = state.withLock { s in
            guard let e = s.jobs[id] else { return (nil, Hooks()) }
            guard case .moved(let to, let error) = JobStateMachine.apply(event, to: e.latest.status) else { return (nil, Hooks()) }
            var r = e.latest
            r.status = to
            if let error {
                r.error = error
                if r.errorMessage == nil { r.errorMessage = error.defaultMessage }
            }
            fill(&r)
            if to.isTerminal, let callback = r.callback, callback.status == .waiting {
                // The end and its delivery in one write (DESIGN "Webhook deliveries").
                r.callback = to == .canceled
                    ? callback.with(status: .failed, lastError: "job_canceled")
                    : callback.with(status: .pending, nextAttemptAt: r.completedAt ?? wallClockMillis())
            }
            e.stage(r)
            var abort: (loop: EventLoop, run: @Sendable () -> Void)?
            if to != .running {
                abort = e.abort
                e.abort = nil
            }
            var withdraw: WithdrawHook?
            if to != .queued {
                withdraw = e.withdraw
                e.withdraw = nil
            }
            if to.isTerminal { s.dropRequest(of: e) }
            return (r, Hooks(abort: abort, withdraw: withdraw))
        }
        guard let updated else { return (nil, Hooks()) }
        let due = updated.status.isTerminal && updated.callback?.isPending == true
        store.update(updated, response: response) { [self] error in
            publish(updated, stored: error == nil)
            if due && error == nil, let handler = callbackDue.withLock({ $0 }) { handler.run(updated, response) }
            done(error)
        }
        return (updated, hooks)
    }

    /// Writes a new state of a terminal job's callback (a delivery attempt's
    /// outcome, a re-arm): `change` gets the latest one and returns the next,
    /// or nil to write nothing. Returns the record written. A callback made
    /// pending again (re-armed) is handed to `onCallbackDue` once durable.
    /// `deferred`: an attempt's outcome, which the store may commit a few
    /// milliseconds later with other writes (`JobStore.updateDeferred`).
    @discardableResult
    public func updateCallback(of id: JobID, deferred: Bool = false, _ change: (JobCallback) -> JobCallback?,
                               done: @escaping @Sendable (StoreError?) -> Void = { _ in }) -> JobRecord? {
        ordering.withLock { _ in
            var armed = false
            let updated: JobRecord? = state.withLock { s in
                guard let e = s.jobs[id], let callback = e.latest.callback, let next = change(callback) else { return nil }
                armed = next.isPending && !callback.isPending && e.latest.status.isTerminal
                var r = e.latest
                r.callback = next
                e.stage(r)
                return r
            }
            guard let updated else { return nil }
            let stored: @Sendable (StoreError?) -> Void = { [self, armed] error in
                publish(updated, stored: error == nil, transition: false)
                if armed && error == nil, let handler = callbackDue.withLock({ $0 }) { handler.run(updated, nil) }
                done(error)
            }
            if deferred {
                store.updateDeferred(updated, done: stored)
            } else {
                store.update(updated, response: nil, done: stored)
            }
            return updated
        }
    }

    /// What a transition took from the entry, to run outside the lock.
    struct Hooks {
        var abort: (loop: EventLoop, run: @Sendable () -> Void)?
        var withdraw: WithdrawHook?
    }

    /// A write came back from the store: a durable state becomes visible
    /// (and a terminal one wakes the long polls); a refused one is dropped.
    /// `transition`: a lifecycle step (its duration is observed once); a
    /// callback's progress is not one.
    private func publish(_ record: JobRecord, stored: Bool, transition: Bool = true) {
        let woken: [Waiter] = state.withLock { s in
            guard let e = s.jobs[record.id] else { return [] }
            if let ahead = e.ahead {
                ahead.writes -= 1
                if ahead.writes == 0 { e.ahead = nil }
            }
            guard stored else { return [] }
            let before = e.visible
            e.visible = record
            s.count(record, replacing: before)
            if transition, record.status == .completed, let started = record.startedAt, let ended = record.completedAt {
                s.observe(record.workload, millis: ended - started)
            }
            if transition { meter(record, after: before, &s) }
            // Long polls wait for the end: only terminal states wake them.
            guard record.status.isTerminal else { return [] }
            defer { e.waiters = [] }
            return e.waiters
        }
        for w in woken { w.loop.execute(w.wake) }
    }

    /// `jobs_finished_total`, `job_duration_seconds` and `job_retries_total`
    /// for a transition that became durable; under `state`'s lock.
    private func meter(_ r: JobRecord, after before: JobRecord, _ s: inout State) {
        if r.status.isTerminal && !before.status.isTerminal {
            let slot = s.upstreamSlot(r.upstream)
            meters.add(MeterKey(.jobsFinished, slot: slot, r.status.ordinal))
            let millis = max(0, (r.completedAt ?? wallClockMillis()) - r.createdAt)
            meters.observe(.jobDuration, slot: slot, .jobDuration, nanos: UInt64(millis) * 1_000_000)
        } else if r.status == .queued && before.status == .running {
            meters.add(MeterKey(.jobRetries, slot: s.upstreamSlot(r.upstream)))
        }
    }

    /// The request kept since the job's insert, handed over once (dispatch);
    /// nil when it was not kept (then the store has it).
    public func takeRequest(_ id: JobID) -> JobRequest? {
        state.withLock { s in
            guard let e = s.jobs[id], let r = e.request else { return nil }
            s.dropRequest(of: e)
            return r
        }
    }

    /// Bytes of requests kept for dispatch (tests).
    public var cachedRequestBytes: Int { state.withLock { $0.cachedRequestBytes } }

    /// Registers the hook that aborts a running job's exchange (DELETE).
    /// False if the job is no longer running (a cancel came first).
    public func setAbort(_ id: JobID, loop: EventLoop, _ run: @escaping @Sendable () -> Void) -> Bool {
        state.withLock { s in
            guard let e = s.jobs[id], e.latest.status == .running else { return false }
            e.abort = (loop, run)
            return true
        }
    }

    /// Registers how a queued job leaves its upstream's queue (DELETE).
    public func setWithdraw(_ id: JobID, _ hook: WithdrawHook) {
        state.withLock { s in
            guard let e = s.jobs[id], e.latest.status == .queued else { return }
            e.withdraw = hook
        }
    }

    /// DELETE on a pending job: canceled, and a running exchange aborted.
    public func cancel(_ id: JobID, done: @escaping @Sendable (StoreError?) -> Void) -> JobRecord? {
        let now = wallClockMillis()
        let (r, hooks) = ordering.withLock { _ in
            applyInOrder(.cancel, to: id, response: nil, fill: { $0.completedAt = now }, done: done)
        }
        hooks.withdraw?.run()
        if let abort = hooks.abort { abort.loop.execute(abort.run) }
        return r
    }

    /// Removes jobs for good (DELETE of a terminal job, expiry).
    public func remove(_ ids: [JobID], done: @escaping @Sendable (StoreError?) -> Void) {
        ordering.withLock { _ in removeInOrder(ids, done: done) }
    }

    private func removeInOrder(_ ids: [JobID], done: @escaping @Sendable (StoreError?) -> Void) {
        let woken: [Waiter] = state.withLock { s in
            var woken: [Waiter] = []
            for id in ids {
                guard let e = s.jobs.removeValue(forKey: id) else { continue }
                s.uncount(e.visible)
                s.dropRequest(of: e)
                woken += e.waiters
                if let key = e.visible.keyIndex, s.keys[key] == .some(id) { s.keys[key] = nil }
            }
            return woken
        }
        for w in woken { w.loop.execute(w.wake) }
        store.delete(ids, done: done)
    }

    /// Terminal jobs whose result outlived `ttl`, as of `now`. The scan
    /// takes the lock one shard at a time, so a table of a million jobs
    /// never holds every loop up for the whole walk. (A job found expired
    /// stays expired: terminal states do not change.)
    public func expired(now: Int64, ttl: Duration) -> [JobID] {
        let ttlMillis = ttl.nanoseconds / 1_000_000
        var ids: [JobID] = []
        for shard in 0..<JobIDMap<Entry>.shardCount {
            state.withLock { s in
                s.jobs.forEach(inShard: shard) { id, e in
                    if e.latest.isExpired(now: now, ttlMillis: ttlMillis) { ids.append(id) }
                }
            }
        }
        return ids
    }

    /// Ended jobs whose callback is still to be delivered (after a start).
    public func pendingCallbacks() -> [JobRecord] {
        var records: [JobRecord] = []
        for shard in 0..<JobIDMap<Entry>.shardCount {
            state.withLock { s in
                s.jobs.forEach(inShard: shard) { _, e in
                    let r = e.latest
                    if r.status.isTerminal, r.callback?.isPending == true { records.append(r) }
                }
            }
        }
        return records
    }

    // MARK: Long polls

    /// Calls `wake` on `loop` when the job ends (or vanishes). Returns a
    /// token for `stopWaiting`, or nil when the job is already terminal or gone.
    public func wait(for id: JobID, loop: EventLoop, wake: @escaping @Sendable () -> Void) -> Int? {
        state.withLock { s in
            guard let e = s.jobs[id], !e.visible.status.isTerminal else { return nil }
            let token = s.nextToken
            s.nextToken += 1
            e.waiters.append(Waiter(token: token, loop: loop, wake: wake))
            return token
        }
    }

    public func stopWaiting(_ id: JobID, token: Int) {
        state.withLock { s in
            if let e = s.jobs[id] { e.waiters.removeAll { $0.token == token } }
        }
    }

    // MARK: Estimates

    /// When the job should end, from the upstream's recent job durations
    /// and the jobs ahead of it; nil without observations.
    /// When the job should end: its workload's mean observed duration
    /// after the start if running; if queued, after the `ahead` exchanges
    /// before it (queued and in flight) have gone through `concurrency`
    /// slots, a mean each. Nil while the workload has no observation.
    public func estimatedCompletion(of r: JobRecord, ahead: Int, concurrency: Int, now: Int64) -> Int64? {
        guard !r.status.isTerminal else { return nil }
        let observed = state.withLock { $0.observed[r.workload] }
        guard let observed, observed.samples > 0 else { return nil }
        let mean = Int64(observed.meanMillis.rounded())
        if r.status == .running, let started = r.startedAt {
            return max(now, started + mean)
        }
        let rounds = Int64(max(0, ahead) / max(1, concurrency)) + 1
        return now + rounds * mean
    }

    /// Records a duration seen outside a job (an `auto` request answered in time).
    public func observe(_ workload: Workload, millis: Int64) {
        state.withLock { $0.observe(workload, millis: millis) }
    }
}

/// How a queued job leaves its upstream's queue: `leave(token)`. `leave`
/// is its upstream's, one closure shared by all its jobs, so a queued job
/// holds a token and two words, not a closure of its own.
public struct WithdrawHook: Sendable {
    public let token: UInt64
    public let leave: @Sendable (UInt64) -> Void

    public init(token: UInt64, leave: @escaping @Sendable (UInt64) -> Void) {
        self.token = token
        self.leave = leave
    }

    func run() { leave(token) }
}

extension JobRecord {
    /// The route and method its duration is observed under.
    public var workload: JobTable.Workload { .init(route: route, method: method) }
}

extension JobErrorCode {
    public var defaultMessage: String {
        switch self {
        case .upstreamUnreachable: return "upstream refused or unreachable"
        case .upstreamTimeout: return "upstream did not answer within its timeout"
        case .upstreamReset: return "upstream closed the connection before the response was complete"
        case .upstreamBadResponse: return "upstream sent a malformed response"
        case .responseTooLarge: return "upstream response exceeds jobs.max_result_body"
        case .interrupted: return "the proxy restarted while the request was in flight and it is not safe to resend"
        }
    }
}
