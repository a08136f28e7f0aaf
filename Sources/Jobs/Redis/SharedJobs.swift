import Config
import HTTP
import Logging
import Loop
import Proxy
import Store

#if canImport(Glibc)
import Glibc
#endif

/// One loop's jobs on the Redis store (SPEC §5b): what this loop claims
/// and runs (the `RedisDispatcher` asks, this sends), the long polls held
/// here, and the replicas' wake-ups (`PREFIX:events`: `queued UPSTREAM`,
/// `end ID`, `cancel ID`) heard on this loop's own subscription.
///
/// A claimed job takes a local upstream slot as well (forced, like a job
/// already accepted), so sync requests and jobs together stay within
/// `max_concurrency` on this replica, and the global claims within it
/// across the replicas. A replica with no local slot free claims nothing:
/// the others take the job.
///
/// Confined to its loop.
final class SharedJobs: ClaimRunner {
    unowned let jobs: JobLoop
    let store: RedisJobStore
    private(set) var dispatcher: RedisDispatcher!
    private var subscriber: RedisSubscriber?

    /// A claimed job from its claim until its end is written (or its claim lost).
    private final class Claimed {
        enum Phase {
            /// Waiting for a local slot (`token`: its place at the gate, once queued).
            case waiting(token: UInt64?)
            /// The exchange runs (`runner`: none for an adopted `auto`
            /// exchange whose end came with it).
            case exchanging(JobRunner?)
            /// Over here (ended, or canceled on some replica): its end is being written.
            case ending
        }

        let record: JobRecord
        let request: JobRequest
        let target: UpstreamTarget
        var phase: Phase

        init(_ record: JobRecord, request: JobRequest, target: UpstreamTarget, phase: Phase) {
            self.record = record
            self.request = request
            self.target = target
            self.phase = phase
        }
    }

    private var claimed: [JobID: Claimed] = [:]
    private var waiters: [JobID: [Int: () -> Void]] = [:]
    private var nextToken = 1

    init(jobs: JobLoop, store: RedisJobStore) {
        self.jobs = jobs
        self.store = store
        let upstreams = jobs.config.upstreams.map { (name: $0.name, limit: $0.gate.maxConcurrency) }
        dispatcher = RedisDispatcher(loop: jobs.loop, store: store, upstreams: upstreams, runner: self)
        dispatcher.room = { [unowned self] name in
            guard !self.jobs.engine.isStopping, let gate = self.jobs.config.upstream(named: name)?.gate else { return 0 }
            return max(0, gate.maxConcurrency - gate.current)
        }
    }

    var loop: EventLoop { jobs.loop }
    var log: Logger { jobs.log }

    /// Subscribes to the replicas' wake-ups and starts claiming.
    func start() {
        let s = RedisSubscriber(loop: loop, endpoint: store.settings.endpoint, channel: store.keys.events, onChange: { [unowned self] change in
            // (Re)subscribed: whatever was published meanwhile is looked up again.
            if change == .ready { self.wakeEverything() }
        }, onMessage: { [unowned self] message in self.heard(message) })
        subscriber = s
        s.start()
        dispatcher.start()
        if loop.index == 0 { countJobs() }
    }

    /// Loop 0 counts the jobs in Redis for the gauges, every 2 s.
    private var counting: Timer?

    private func countJobs() {
        store.count(upstreams: jobs.config.upstreams.map(\.name), on: loop)
        if counting == nil { counting = Timer(loop: loop) { [unowned self] in self.countJobs() } }
        counting?.schedule(after: .seconds(2))
    }

    func close() {
        counting?.cancel()
        dispatcher.stop()
        subscriber?.close()
        subscriber = nil
    }

    /// The configuration was reloaded (this loop's proxy has it already).
    func configChanged() {
        dispatcher.update(upstreams: jobs.config.upstreams.map { (name: $0.name, limit: $0.gate.maxConcurrency) })
    }

    /// This loop's command connection changed: a lost one means the
    /// subscription may be stuck on the same Redis too.
    func connectionChanged(_ change: RedisConnection.Change) {
        if case .lost = change { subscriber?.reset() }
    }

    private func heard(_ message: [UInt8]) {
        guard let space = message.firstIndex(of: UInt8(ascii: " ")) else { return }
        let word = message[..<space], rest = String(decoding: message[(space + 1)...], as: UTF8.self)
        if word.elementsEqual("queued".utf8) {
            dispatcher.wake(rest)
        } else if let id = JobID(rest) {
            if word.elementsEqual("end".utf8) {
                wake(id)
            } else if word.elementsEqual("cancel".utf8) {
                abort(id, claimLost: false)
            }
        }
    }

    private func wakeEverything() {
        for name in jobs.config.upstreams.map(\.name) { dispatcher.wake(name) }
        for id in Array(waiters.keys) { wake(id) }
    }

    // MARK: Long polls

    /// Calls `wake` (once) when the job may have ended: its `end` was heard,
    /// or the subscription came back and messages may have been missed.
    func wait(for id: JobID, wake: @escaping () -> Void) -> Int {
        let token = nextToken
        nextToken += 1
        waiters[id, default: [:]][token] = wake
        return token
    }

    func stopWaiting(_ id: JobID, token: Int) {
        waiters[id]?[token] = nil
        if waiters[id]?.isEmpty == true { waiters[id] = nil }
    }

    private func wake(_ id: JobID) {
        guard let woken = waiters.removeValue(forKey: id) else { return }
        for w in woken.values { w() }
    }

    // MARK: Claims (ClaimRunner)

    func run(_ claim: RedisJobStore.Claim, for dispatcher: RedisDispatcher) {
        let id = claim.record.id
        guard let target = jobs.config.upstream(named: claim.record.upstream) else {
            var r = claim.record
            r.error = .upstreamUnreachable
            r.errorMessage = "upstream '\(r.upstream)' is no longer configured"
            write(id, r, .failed)
            return
        }
        let c = Claimed(claim.record, request: claim.request, target: target, phase: .waiting(token: nil))
        claimed[id] = c
        let token = target.gate.makeToken()
        let bound = LoopBound(self, loop: loop)
        switch target.gate.acquire(GateWaiter(loop: loop, token: token) { bound.value.slotGranted(id, target) }, force: true) {
        case .acquired, .rejected: slotGranted(id, target)  // forced: never rejected
        case .queued: c.phase = .waiting(token: token)
        }
    }

    private func slotGranted(_ id: JobID, _ target: UpstreamTarget) {
        guard let c = claimed[id], case .waiting = c.phase else {
            target.gate.release()  // stopped while it waited
            return
        }
        let bound = LoopBound(self, loop: loop)
        let r = c.record
        let runner = JobRunner(jobs: jobs, id: id, target: c.target, request: c.request, attempt: r.attempts,
                               isHead: r.method == "HEAD", resendable: r.resendable,
                               maxBody: jobs.config.configuration.jobs.maxResultBody) { outcome in
            bound.value.exchangeEnded(id, outcome)
        }
        c.phase = .exchanging(runner)
        runner.start()
    }

    /// An `auto` exchange that became a job written claimed by this
    /// replica: it goes on as the job's (`runner`), renewed and abortable
    /// like a claimed one; its end comes through `exchangeEnded`. No
    /// runner: the exchange ended while the job was being written.
    func adopt(_ record: JobRecord, request: JobRequest, target: UpstreamTarget, runner: JobRunner?) {
        claimed[record.id] = Claimed(record, request: request, target: target, phase: .exchanging(runner))
        dispatcher.adopt(record.id, upstream: record.upstream)
    }

    func abort(_ id: JobID, claimLost: Bool) {
        guard let c = claimed[id] else { return }
        switch c.phase {
        case .waiting(let token):
            // A grant already on its way finds the job gone and is given back.
            if let token { c.target.gate.withdraw(token) }
        case .exchanging(let runner):
            runner?.abort()
        case .ending:
            return  // its end is being written already
        }
        c.phase = .ending
        if claimLost {
            // Another replica may own the job now: nothing of this run is written.
            log.warning("job claim lost; its exchange here is stopped", metadata: ["job": "\(id)"])
            claimed[id] = nil
            return
        }
        // Canceled: the end is written (the job stays canceled) and the claim, the slot, given back.
        write(id, c.record, .failed)
    }

    /// The exchange ended: another attempt (SPEC §4, upstream retries), or its outcome.
    func exchangeEnded(_ id: JobID, _ outcome: JobRunner.Outcome) {
        guard let c = claimed[id], case .exchanging = c.phase else { return }
        c.phase = .ending
        var r = c.record
        let now = wallClockMillis()
        if !jobs.engine.isStopping,
           let delay = UpstreamRetry.delay(after: outcome, attempts: r.attempts, resendable: r.resendable,
                                           policy: c.target.config.retry) {
            if case .response(let response, _, _) = outcome { removeSpoolFile(response.body.filePath) }
            write(id, r, .retry(at: now + delay.nanoseconds / 1_000_000))
            return
        }
        switch outcome {
        case .response(let response, let contentType, _):
            guard let body = readBody(response.body) else {
                r.error = .upstreamBadResponse
                r.errorMessage = "the captured response could not be read back from the spool"
                write(id, r, .failed)
                return
            }
            r.responseStatus = response.status
            r.responseSize = Int64(body.count)
            r.contentType = contentType
            if let started = r.startedAt {
                jobs.table.observe(r.workload, millis: now - started)
            }
            var kept = response
            kept.body = .empty
            write(id, r, .completed(kept, body: body))
        case .failure(let code, let message, _):
            r.error = code
            r.errorMessage = message
            write(id, r, .failed)
        }
    }

    /// Writes an attempt's end under this replica's claim; Redis unreachable:
    /// again in a second (the claim is renewed meanwhile, until its lease).
    /// A drain waits for the write (or the job would be run again after the lease).
    private func write(_ id: JobID, _ r: JobRecord, _ outcome: RedisJobStore.Outcome, again: Bool = false) {
        if !again { jobs.engine.startBegan() }
        store.finish(r, outcome, now: wallClockMillis(), on: loop) { [self] result in
            switch result {
            case .success(let finished):
                if finished == .lost {
                    log.warning("job claim lost before its end was written; another replica has it",
                                metadata: ["job": "\(id)"])
                }
                claimed[id] = nil
                jobs.engine.startEnded()
                dispatcher.ended(id, upstream: r.upstream)
            case .failure(let error):
                log.error("job outcome not stored, retrying", metadata: ["job": "\(id)", "error": "\(error)"])
                jobs.later(.seconds(1)) { jobs in jobs.shared?.write(id, r, outcome, again: true) }
            }
        }
    }
}

/// A stored body's bytes (a spooled one read and its file removed).
func readBody(_ body: StoredBody) -> [UInt8]? {
    switch body {
    case .inline(let bytes):
        return bytes
    case .file(let path, let size):
        defer { removeSpoolFile(path) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return nil }
            done += n
        }
        return bytes
    }
}
