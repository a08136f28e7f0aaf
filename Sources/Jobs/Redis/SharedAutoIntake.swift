import Config
import HTTP
import Logging
import Loop
import Meters
import Proxy
import Store

/// A request on an `auto` route with the Redis store (SPEC §3, §5b): sent
/// upstream at once; a response whole within `async_after` (or `Prefer:
/// wait=N`) is relayed and no job exists. Otherwise, at that moment, the job
/// is written to Redis and answered 202:
///
/// - its exchange under way: `running`, claimed by this replica in the same
///   script, and the exchange goes on as the job's (renewed and abortable
///   like any claim here), so nothing is sent twice;
/// - still waiting for a local slot: `queued`, for whichever replica has
///   one; the place here is given up.
///
/// The races (the write against the exchange's end, a late slot, the client
/// leaving) are `IntakeMachine`'s, as with the SQLite store. An
/// Idempotency-Key that already names a job answers with that job; one
/// taken by another replica while this exchange ran makes the write fail,
/// and the exchange is answered directly, as when Redis is unreachable.
final class SharedAutoIntake: RequestHandler {
    typealias Machine = IntakeMachine<JobRunner.Outcome>

    private unowned let shared: SharedJobs
    private var client: HTTPServerConnection?
    private let submission: JobSubmission
    private let id: JobID
    private let base: [UInt8]
    private let spool = BodySpool()
    private var machine = Machine()
    /// The request body, for the exchange and for the job's write.
    private var body: [UInt8] = []
    private var request: JobRequest?
    private var fingerprint: [UInt8]?
    private var createdAt: Int64 = 0
    private var runner: JobRunner?
    private var runnerStartedAt: Int64?
    private var runnerStart: UInt64 = 0
    private var timer: Timer?
    private var gateToken: UInt64 = 0

    private var jobs: JobLoop { shared.jobs }
    private var target: UpstreamTarget { submission.route.upstream }

    init(shared: SharedJobs, client: HTTPServerConnection, request r: MessageReader, route: CompiledRoute,
         credential: [UInt8]?, base: [UInt8], callback: JobCallback?) {
        self.shared = shared
        self.client = client
        self.base = base
        let jobs = shared.jobs
        id = jobs.jobIDs.make()
        submission = JobSubmission(r, route: route, client: client, jobs: jobs, credential: credential, callback: callback)
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
        guard let stored = try? spool.finish(), let bytes = readBody(stored) else {
            answerEarly(.spoolFailed)
            return
        }
        body = bytes
        request = JobRequest(head: submission.head, body: .inline(bytes), declaresBody: submission.declaresBody)
        createdAt = wallClockMillis()
        guard let key = submission.keyIndex else { return forward() }
        // A job the key already names answers for it; else the key becomes
        // the job's if this request becomes one.
        shared.store.job(forKey: key, on: jobs.loop) { [self] result in
            guard machine.isReceivingBody else { return }  // the client left meanwhile
            switch result {
            case .failure: answerEarly(.storeUnavailable)
            case .success(nil): forward()
            case .success(let existing?):
                guard jobs.isVisible(existing, credential: submission.credential) else {
                    return answerEarly(.idempotencyKeyInUse)
                }
                guard existing.fingerprint == fingerprint else { return answerEarly(.idempotencyKeyMismatch) }
                perform(.answeredEarly)
                request = nil
                jobs.answerAccepted(client, existing, preference: nil, base: base)
            }
        }
    }

    private func forward() {
        let seconds: Duration
        if case .wait(let n) = submission.preference { seconds = .seconds(n) } else { seconds = submission.route.asyncAfter }
        timer = Timer(loop: jobs.loop) { [unowned self] in self.perform(.deadline) }
        timer?.schedule(after: seconds)
        let bound = LoopBound(self, loop: jobs.loop)
        gateToken = target.gate.makeToken()
        let outcome = target.gate.acquire(GateWaiter(loop: jobs.loop, token: gateToken) { bound.value.perform(.slotGranted) },
                                          force: false)
        perform(.forward(outcome, claim: false))
    }

    /// Refused at body end, before any job: the error is the answer.
    private func answerEarly(_ error: HTTPError) {
        perform(.answeredEarly)
        spool.discard()
        request = nil
        client?.respondError(error)
    }

    // MARK: Performing the machine's actions

    private func perform(_ event: Machine.Event) {
        let action = machine.handle(event)
        if machine.isDone { timer?.cancel() }
        switch action {
        case .none:
            break
        case .commitQueued:
            // Still waiting for a slot here: the job is Redis's queue's, for
            // any replica. A grant already on its way is given back when it comes.
            target.gate.withdraw(gateToken)
            write(status: .queued)
        case .commitRunning:
            write(status: .running)
        case .startExchange:
            startExchange()
        case .answerDirectly(let outcome, _):
            runner = nil
            jobs.table.observe(.init(route: submission.route.label, method: submission.method),
                               millis: Int64((monotonicNanos() - runnerStart) / 1_000_000))
            jobs.answerForwarded(outcome, to: client, preference: submission.preference)
            request = nil
        case .jobCommitted(let start, _):
            jobCommitted(start)
        case .refuseUnstored(_, let withdraw, let releaseSlot):
            if withdraw { target.gate.withdraw(gateToken) }
            if releaseSlot { target.gate.release() }
            request = nil
            client?.respondError(.storeUnavailable)
        case .refuseQueueFull:
            request = nil
            client?.respondError(.upstreamQueueFull)
        case .releaseSlot, .runQueuedJob:
            // A job written queued is claimed from Redis like any other.
            target.gate.release()
        case .finishJob(let outcome):
            shared.exchangeEnded(id, outcome)
        case .abandon(let withdraw, let abortExchange, _):
            if withdraw { target.gate.withdraw(gateToken) }
            if abortExchange { runner?.abort() }
            runner = nil
            spool.discard()
            request = nil
        case .abortExchange:
            runner?.abort()
            runner = nil
            request = nil
        case .answerResult, .stopWaiting:
            break  // only for accepted jobs (`SharedIntake`)
        }
    }

    private func record(status: JobStatus) -> JobRecord {
        submission.record(id: id, status: status, createdAt: createdAt, fingerprint: fingerprint, startedAt: runnerStartedAt)
    }

    private func write(status: JobStatus) {
        let r = record(status: status)
        let stored = JobRequest(head: submission.head, body: .empty, declaresBody: submission.declaresBody)
        shared.store.create(r, request: stored, body: body, keyIndex: submission.keyIndex, claimed: status == .running,
                            on: jobs.loop) { [self] result in
            switch result {
            case .success(.created):
                jobs.proxy.meters?.add(MeterKey(.jobsCreated, slot: submission.route.meterSlot,
                                                submission.route.mode.meterIndex))
                perform(.committed)
            case .success(.existing):
                jobs.log.warning("job not written: its Idempotency-Key was taken by another request meanwhile",
                                 metadata: ["job": "\(id)"])
                perform(.commitFailed)
            case .failure(let error):
                jobs.log.error("job commit failed", metadata: ["job": "\(id)", "error": "\(error)"])
                perform(.commitFailed)
            }
        }
    }

    private func jobCommitted(_ start: Machine.JobStart) {
        let running: Bool
        switch start {
        case .adoptExchange, .finishWithOutcome: running = true
        default: running = false
        }
        let r = record(status: running ? .running : .queued)
        switch start {
        case .adoptExchange:
            if let request { shared.adopt(r, request: request, target: target, runner: runner) }
            runner = nil
        case .finishWithOutcome(let outcome):
            runner = nil
            if let request { shared.adopt(r, request: request, target: target, runner: nil) }
            shared.exchangeEnded(id, outcome)
        case .runWithGrantedSlot:
            target.gate.release()  // the grant that raced the write: the job is Redis's queue's
        case .waitInQueue, .dispatch, .dispatchAndWait:
            break
        }
        request = nil
        let applied: JobPreference? = submission.preference == .absent ? nil : submission.preference
        jobs.answerAccepted(client, r, preference: applied, base: base)
    }

    // MARK: The exchange

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

    func connectionClosed(connection: HTTPServerConnection) {
        perform(.clientClosed)
    }

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}
