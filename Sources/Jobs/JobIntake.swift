import Config
import HTTP
import Store
import Logging
import Loop
import Meters
import Proxy

#if canImport(Glibc)
import Glibc
#endif

/// A request on an `async` or `auto` route (SPEC §3), from its head to the
/// answer: the body is collected (spooled beyond a threshold), then either
///
/// - it becomes a job at once (`async`, or `Prefer: respond-async`): it is
///   committed `queued`, answered 202, and dispatched; with `Prefer: wait=N`
///   the answer waits up to N seconds for the job's result first; or
/// - it is forwarded at once (`auto`): a response that is whole within
///   `async_after` (or `Prefer: wait=N`) is relayed directly and no job
///   exists; otherwise, at that moment, the job is committed (`running`
///   with the exchange under way, `queued` if still waiting for a slot) and
///   answered 202 while the same exchange goes on. Nothing is sent twice.
///
/// The decisions, and the races between the store, the gate, the
/// exchange and the client, are `IntakeMachine`'s; this class holds the
/// request, the spool, the runner and the timer, and performs the actions.
final class JobIntake: RequestHandler {
    typealias Preference = JobPreference

    typealias Machine = IntakeMachine<JobRunner.Outcome>

    unowned let jobs: JobLoop
    private var client: HTTPServerConnection?
    let route: CompiledRoute
    let id: JobID
    private var machine = Machine()
    private let spool = BodySpool()
    private let submission: JobSubmission
    private var method: String { submission.method }
    private var isHead: Bool { submission.isHead }
    private var resendable: Bool { submission.resendable }
    private var idempotencyKey: String? { submission.idempotencyKey }
    /// The key as the table indexes it (within the credential).
    private var keyIndex: String? { submission.keyIndex }
    private var preference: Preference { submission.preference }
    private let base: [UInt8]
    private var request: JobRequest?
    private var fingerprint: [UInt8]?
    private var createdAt: Int64 = 0
    /// The exchange (auto), from its start until it ends or becomes the job's.
    private var runner: JobRunner?
    private var runnerStartedAt: Int64?
    private var runnerStart: UInt64 = 0
    /// Made only when a deadline is needed (auto, or `Prefer: wait`).
    private var timer: Timer?
    private var waitToken: Int?
    /// This request's place in the gate's queue (auto), which a job
    /// committed while queued keeps; or the place a dispatched async job
    /// takes. Its withdraw hook comes with the job's insert.
    private var gateToken: UInt64 = 0

    var target: UpstreamTarget { route.upstream }
    private var jobsConfig: Config.Jobs { jobs.config.configuration.jobs }

    init(jobs: JobLoop, client: HTTPServerConnection, request r: MessageReader, route: CompiledRoute,
         credential: [UInt8]?, base: [UInt8], callback: JobCallback?) {
        self.jobs = jobs
        self.client = client
        self.route = route
        self.id = jobs.jobIDs.make()
        self.base = base
        self.submission = JobSubmission(r, route: route, client: client, jobs: jobs, credential: credential, callback: callback)
        client.logUpstream = route.upstream.name
        spool.fingerprint = submission.startFingerprint()
    }

    // MARK: Request body

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {
        guard machine.isReceivingBody else {
            buffer.removeAll()
            return
        }
        if !spool.take(buffer, id: id, jobs: jobs) { answerEarly(.spoolFailed) }
    }

    func requestEnd(connection: HTTPServerConnection) {
        guard machine.isReceivingBody else { return }
        fingerprint = submission.finishFingerprint(spool.fingerprint)
        let body: StoredBody
        do {
            body = try spool.finish()
        } catch {
            answerEarly(.spoolFailed)
            return
        }
        request = JobRequest(head: submission.head, body: body, declaresBody: submission.declaresBody)
        createdAt = wallClockMillis()
        var claimed = false
        if let key = keyIndex, let fingerprint {
            switch jobs.table.claim(key: key, fingerprint: fingerprint, now: createdAt, ttl: jobsConfig.resultTTL) {
            case .claimed:
                claimed = true
            case .existing(let record):
                discardRequest()
                perform(.answeredEarly)
                jobs.answerAccepted(client, record, preference: nil, base: base)
                return
            case .mismatch:
                answerEarly(.idempotencyKeyMismatch)
                return
            case .inFlight:
                answerEarly(.idempotencyKeyInUse)
                return
            }
        }
        if route.mode == .async || preference == .respondAsync {
            // Prefer: wait=N on an async route (respond-async excludes it).
            var wait = false
            if case .wait = preference { wait = true }
            perform(.accept(reserved: target.gate.tryReserve(), wait: wait, claim: claimed))
            return
        }
        let seconds: Duration
        if case .wait(let n) = preference { seconds = .seconds(n) } else { seconds = route.asyncAfter }
        armDeadline(after: seconds)
        let bound = LoopBound(self, loop: jobs.loop)
        gateToken = target.gate.makeToken()
        let outcome = target.gate.acquire(GateWaiter(loop: jobs.loop, token: gateToken) { bound.value.perform(.slotGranted) },
                                          force: false)
        perform(.forward(outcome, claim: claimed))
    }

    /// Refused at body end, before any job: the error is the answer.
    private func answerEarly(_ error: HTTPError) {
        perform(.answeredEarly)
        spool.discard()
        discardRequest()
        client?.respondError(error)
    }

    private func record(status: JobStatus) -> JobRecord {
        submission.record(id: id, status: status, createdAt: createdAt, fingerprint: fingerprint, startedAt: runnerStartedAt)
    }

    // MARK: Performing the machine's actions

    private func perform(_ event: Machine.Event) {
        let action = machine.handle(event)
        if machine.isDone { timer?.cancel() }
        switch action {
        case .none:
            break
        case .commitQueued:
            commit(record(status: .queued))
        case .commitRunning:
            commit(record(status: .running))
        case .startExchange:
            startExchange()
        case .answerDirectly(let outcome, let claim):
            answerDirectly(outcome, claim: claim)
        case .jobCommitted(let start, let unreserve):
            if unreserve { target.gate.unreserve() }
            jobCommitted(start)
        case .refuseUnstored(let unreserve, let withdraw, let releaseSlot):
            if unreserve { target.gate.unreserve() }
            if withdraw { target.gate.withdraw(gateToken) }
            if releaseSlot { target.gate.release() }
            discardRequest()
            client?.respondError(.storeUnavailable)
        case .refuseQueueFull(let claim):
            releaseClaim(claim)
            discardRequest()
            client?.respondError(.upstreamQueueFull)
        case .releaseSlot:
            target.gate.release()
        case .runQueuedJob:
            jobs.slotGranted(forJob: id, target: target)
        case .finishJob(let outcome):
            jobs.jobFinished(id, outcome)
        case .abandon(let withdraw, let abortExchange, let claim):
            // No 202 was promised: the exchange is dropped (the upstream
            // sees the close), like a sync request whose client left.
            if withdraw { target.gate.withdraw(gateToken) }
            if abortExchange { runner?.abort() }
            runner = nil
            releaseClaim(claim)
            spool.discard()
            discardRequest()
        case .abortExchange:
            runner?.abort()
            runner = nil
            discardRequest()
        case .answerResult:
            answerResult()
        case .stopWaiting:
            if let token = waitToken { jobs.table.stopWaiting(id, token: token) }
            waitToken = nil
        }
    }

    private func releaseClaim(_ claim: Bool) {
        if claim, let key = keyIndex { jobs.table.releaseClaim(key: key) }
    }

    private func commit(_ record: JobRecord) {
        guard let request else { return }
        let bound = LoopBound(self, loop: jobs.loop)
        // A queued job's way out of its upstream's queue (DELETE) comes with
        // its entry: the gate token it holds (auto, switched while waiting),
        // or the one it will queue with (async).
        var withdraw: WithdrawHook?
        if record.status == .queued {
            if route.mode == .async || preference == .respondAsync { gateToken = target.gate.makeToken() }
            withdraw = WithdrawHook(token: gateToken, leave: target.withdraw)
        }
        jobs.table.insert(record, request: request, withdraw: withdraw, on: jobs.loop) { error in
            bound.value.committed(error: error)
        }
    }

    private func committed(error: StoreError?) {
        if let error {
            jobs.log.error("job commit failed", metadata: ["job": "\(id)", "error": "\(error)"])
            perform(.commitFailed)
        } else {
            jobs.proxy.meters?.add(MeterKey(.jobsCreated, slot: route.meterSlot, route.mode.meterIndex))
            perform(.committed)
        }
    }

    private func jobCommitted(_ start: Machine.JobStart) {
        // The record as committed: running if its exchange was under way.
        let running: Bool
        switch start {
        case .adoptExchange, .finishWithOutcome: running = true
        default: running = false
        }
        let record = self.record(status: running ? .running : .queued)
        let applied: Preference? = preference == .absent ? nil : preference
        switch start {
        case .adoptExchange:
            if let runner { jobs.adopt(runner, for: id) }
            runner = nil
        case .finishWithOutcome(let outcome):
            runner = nil
            jobs.jobFinished(id, outcome)
        case .runWithGrantedSlot:
            jobs.slotGranted(forJob: id, target: target)
        case .waitInQueue:
            break  // this request's place in the queue is the job's now
        case .dispatch:
            jobs.dispatch(record, token: gateToken)
        case .dispatchAndWait:
            // Prefer: wait=N on an async route: the job exists; its result
            // is relayed if it arrives within N seconds.
            jobs.dispatch(record, token: gateToken)
            waitForResult()
            return
        }
        jobs.answerAccepted(client, record, preference: applied, base: base)
    }

    private func waitForResult() {
        guard case .wait(let seconds) = preference else { return }
        let bound = LoopBound(self, loop: jobs.loop)
        waitToken = jobs.table.wait(for: id, loop: jobs.loop) { bound.value.perform(.resultReady) }
        if waitToken == nil {
            perform(.resultReady)
            return
        }
        armDeadline(after: .seconds(seconds))
    }

    private func armDeadline(after delay: Duration) {
        if timer == nil { timer = Timer(loop: jobs.loop) { [unowned self] in self.perform(.deadline) } }
        timer?.schedule(after: delay)
    }

    private func answerResult() {
        if let token = waitToken { jobs.table.stopWaiting(id, token: token) }
        waitToken = nil
        guard let record = jobs.table.lookup(id) else {
            client?.respondError(.jobNotFound)
            return
        }
        if record.status.isTerminal {
            jobs.answerResult(client, record, preference: preference, base: base)
        } else {
            jobs.answerAccepted(client, record, preference: preference, base: base)
        }
    }

    // MARK: auto: the exchange

    private func startExchange() {
        guard let request else {
            target.gate.release()
            return
        }
        let bound = LoopBound(self, loop: jobs.loop)
        let r = submission.runner(jobs: jobs, id: id, request: request) { bound.value.perform(.exchangeEnded($0)) }
        runner = r
        runnerStartedAt = wallClockMillis()
        runnerStart = monotonicNanos()
        r.start()
    }

    /// Whole within async_after: relayed as in sync, and no job exists.
    private func answerDirectly(_ outcome: JobRunner.Outcome, claim: Bool) {
        runner = nil
        jobs.table.observe(.init(route: route.label, method: method),
                           millis: Int64((monotonicNanos() - runnerStart) / 1_000_000))
        releaseClaim(claim)
        jobs.answerForwarded(outcome, to: client, preference: preference)
        discardRequest()
    }

    private func discardRequest() {
        removeSpoolFile(request?.body.filePath)
        request = nil
    }

    func connectionClosed(connection: HTTPServerConnection) {
        perform(.clientClosed)
    }

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}

extension JobErrorCode {
    /// An `auto` exchange that failed before the switch, answered as in sync.
    var httpError: HTTPError {
        switch self {
        case .upstreamUnreachable: return .upstreamUnreachable
        case .upstreamTimeout: return .upstreamTimeout
        case .upstreamReset: return .upstreamReset
        case .upstreamBadResponse: return .badResponse
        case .responseTooLarge: return .responseTooLarge
        case .interrupted: return .interrupted
        }
    }
}
