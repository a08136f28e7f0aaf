import CLibevent
import Config
import HTTP
import Store
import Logging
import Loop
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
/// Phases: `body` -> `slot` (auto: waiting at the gate) -> `exchanging`
/// (auto) -> `committing` (the store is making the job durable) ->
/// `waiting` (async + wait: for the result) -> `done`.
final class JobIntake: RequestHandler {
    enum Phase { case body, slot, exchanging, committing, waiting, done }

    enum Preference: Equatable {
        case absent
        case respondAsync
        /// Seconds, already capped by `jobs.max_wait`.
        case wait(Int)
    }

    unowned let jobs: JobLoop
    private var client: HTTPServerConnection?
    let route: CompiledRoute
    let id: JobID
    private var phase = Phase.body
    private let spool = BodySpool()
    private let head: [UInt8]
    private let method: String
    private let path: String
    private let isHead: Bool
    private let resendable: Bool
    private let declaresBody: Bool
    private let credential: [UInt8]?
    private let idempotencyKey: String?
    /// The key as the table indexes it (within the credential).
    private var keyIndex: String? { idempotencyKey.map { JobRecord.keyIndex(key: $0, credential: credential) } }
    private let preference: Preference
    private let base: [UInt8]
    private var keyClaimed = false
    private var request: JobRequest?
    private var createdAt: Int64 = 0
    private var runner: JobRunner?
    private var runnerStartedAt: Int64?
    private var runnerStart: UInt64 = 0
    /// A slot granted while the job was being committed: dispatch it after.
    private var grantDuringCommit = false
    /// The exchange ended while the job was being committed.
    private var outcomeDuringCommit: JobRunner.Outcome?
    /// Made only when a deadline is needed (auto, or `Prefer: wait`).
    private var timer: Timer?
    private var waitToken: Int?
    /// Names this request's place in the gate's queue (auto).
    private var gateToken: UInt64 = 0
    /// The gate token a queued job's dispatch uses (its withdraw hook is set).
    private var dispatchToken: UInt64?
    /// A place at the gate held while an `async` job is committed.
    private var reservation = false
    /// The exchange went on as the job's after the switch: its end is the job's.
    private var adopted = false

    var target: UpstreamTarget { route.upstream }
    private var jobsConfig: Config.Jobs { jobs.config.configuration.jobs }

    init(jobs: JobLoop, client: HTTPServerConnection, request r: MessageReader, route: CompiledRoute,
         credential: [UInt8]?, base: [UInt8]) {
        self.jobs = jobs
        self.client = client
        self.route = route
        self.id = jobs.jobIDs.make()
        self.method = String(decoding: r.methodName, as: UTF8.self)
        self.path = String(decoding: r.path, as: UTF8.self)
        self.isHead = r.isHead
        self.credential = credential
        self.base = base
        let key = r.first(named: "idempotency-key").map { String(decoding: r.value($0), as: UTF8.self) }
        self.idempotencyKey = key.flatMap { $0.isEmpty ? nil : $0 }
        self.resendable = r.isIdempotent || idempotencyKey != nil
        switch r.framing {
        case .none: self.declaresBody = r.declaredContentLength != nil
        default: self.declaresBody = true
        }
        self.preference = JobIntake.preference(of: r, maxWait: jobs.config.configuration.jobs.maxWait)
        let w = jobs.proxy.scratchWriter
        RequestSerializer.write(request: r, peer: client.peer, target: route.upstream, into: w, framing: false)
        self.head = Array(w.bytes)
        client.logUpstream = route.upstream.name
        if idempotencyKey != nil {
            var f = Fingerprint()
            f.update(Array(method.utf8))
            f.separate()
            f.update(Array(path.utf8))
            f.separate()
            spool.fingerprint = f
        }
    }

    /// RFC 7240 `Prefer`: respond-async, or wait=N seconds.
    static func preference(of r: MessageReader, maxWait: Duration) -> Preference {
        var result = Preference.absent
        for f in r.fields where headerName(r.name(f), equals: "prefer") {
            forEachPreference(r.value(f)) { token in
                if headerName(token, equals: "respond-async") {
                    result = .respondAsync
                } else if token.count > 5, headerName(UnsafeBufferPointer(rebasing: token[0..<5]), equals: "wait="),
                          let n = parseSeconds(UnsafeBufferPointer(rebasing: token[5...])), result == .absent {
                    let cap = Int(maxWait.components.seconds)
                    result = .wait(min(n, cap))
                }
            }
        }
        return result
    }

    // MARK: Request body

    func requestBody(_ buffer: OpaquePointer, connection: HTTPServerConnection) {
        guard phase == .body else {
            evbuffer_drain(buffer, evbuffer_get_length(buffer))
            return
        }
        do {
            try spool.append(buffer, limit: .max, spoolPath: jobs.engine.spoolPath(id, "req"))
        } catch {
            fail(.spoolFailed)
        }
    }

    func requestEnd(connection: HTTPServerConnection) {
        guard phase == .body else { return }
        var fingerprint: [UInt8]?
        if var f = spool.fingerprint {
            f.separate()
            if let credential { f.update(credential) }
            fingerprint = f.finish()
        }
        let body: StoredBody
        do {
            body = try spool.finish()
        } catch {
            fail(.spoolFailed)
            return
        }
        request = JobRequest(head: head, body: body, declaresBody: declaresBody)
        createdAt = wallClockMillis()
        if let key = keyIndex, let fingerprint {
            switch jobs.table.claim(key: key, fingerprint: fingerprint, now: createdAt,
                                          ttl: jobsConfig.resultTTL) {
            case .claimed:
                keyClaimed = true
            case .existing(let record):
                discardRequest()
                phase = .done
                jobs.answerAccepted(client, record, preference: nil, base: base)
                return
            case .mismatch:
                fail(.idempotencyKeyMismatch)
                return
            case .inFlight:
                fail(.idempotencyKeyInUse)
                return
            }
        }
        self.fingerprint = fingerprint
        if route.mode == .async || preference == .respondAsync {
            acceptNow()
        } else {
            forward()
        }
    }

    private var fingerprint: [UInt8]?

    private func record(status: JobStatus) -> JobRecord {
        var r = JobRecord(id: id, status: status, upstream: target.name, route: route.label, method: method, path: path,
                          createdAt: createdAt, resendable: resendable, credential: credential,
                          idempotencyKey: idempotencyKey, fingerprint: fingerprint)
        if status == .running {
            r.startedAt = runnerStartedAt
            r.attempts = 1
        }
        return r
    }

    // MARK: async: commit, answer, dispatch

    private func acceptNow() {
        guard target.gate.tryReserve() else {
            fail(.upstreamQueueFull)
            return
        }
        reservation = true
        commit(record(status: .queued))
    }

    private func commit(_ record: JobRecord) {
        guard let request else { return }
        phase = .committing
        let bound = LoopBound(self, loop: jobs.loop)
        // A queued job's way out of its upstream's queue (DELETE) comes with
        // its entry: the gate token it holds (auto, switched while waiting),
        // or the one it will queue with.
        var withdraw: (@Sendable () -> Void)?
        if record.status == .queued {
            let gate = target.gate
            let token: UInt64
            if route.mode == .async || preference == .respondAsync {
                token = gate.makeToken()
                dispatchToken = token
            } else {
                token = gateToken  // auto: switched while waiting at the gate
            }
            withdraw = { gate.withdraw(token) }
        }
        jobs.table.insert(record, request: request, withdraw: withdraw, on: jobs.loop) { error in
            bound.value.committed(record, error: error)
        }
    }

    private func committed(_ record: JobRecord, error: StoreError?) {
        keyClaimed = false
        if reservation {
            // Committed or refused, the job no longer holds a reserved place;
            // a committed one joins the queue just below.
            reservation = false
            target.gate.unreserve()
        }
        if let error {
            jobs.log.error("job commit failed", metadata: ["job": "\(id)", "error": "\(error)"])
            if grantDuringCommit {
                grantDuringCommit = false
                target.gate.release()
            }
            if record.status == .running {
                // The request already reached the upstream: no job, but no
                // retry invitation either; the exchange ends as in sync.
                phase = .exchanging
                if let outcome = outcomeDuringCommit {
                    outcomeDuringCommit = nil
                    exchangeEnded(outcome)
                }
                return
            }
            fail(.storeUnavailable)
            return
        }
        let applied: Preference? = preference == .absent ? nil : preference
        switch record.status {
        case .running:
            // The exchange goes on in the background (auto).
            if let outcome = outcomeDuringCommit {
                outcomeDuringCommit = nil
                jobs.jobFinished(id, outcome)
            } else if let runner {
                adopted = true
                jobs.adopt(runner, for: id)
            }
            runner = nil
            answer202(record, applied)
        default:
            if route.mode == .async, preference != .respondAsync, case .wait(let seconds) = preference {
                // Prefer: wait=N on an async route: the job exists; its result
                // is relayed if it arrives within N seconds.
                jobs.dispatch(record, token: dispatchToken)
                waitForResult(seconds: seconds)
                return
            }
            if grantDuringCommit {
                grantDuringCommit = false
                jobs.slotGranted(forJob: id, target: target)
            } else if route.mode == .async || preference == .respondAsync {
                jobs.dispatch(record, token: dispatchToken)
            }
            // Else switched while queued: this request's place in the queue
            // is the job's now, and its withdraw hook came with the insert.
            answer202(record, applied)
        }
    }

    private func answer202(_ record: JobRecord, _ applied: Preference?) {
        phase = .done
        timer?.cancel()
        jobs.answerAccepted(client, record, preference: applied, base: base)
    }

    private func waitForResult(seconds: Int) {
        phase = .waiting
        let bound = LoopBound(self, loop: jobs.loop)
        let id = self.id
        waitToken = jobs.table.wait(for: id, loop: jobs.loop) { bound.value.resultReady() }
        if waitToken == nil {
            resultReady()
            return
        }
        armDeadline(after: .seconds(seconds))
    }

    private func armDeadline(after delay: Duration) {
        if timer == nil { timer = Timer(loop: jobs.loop) { [unowned self] in self.deadline() } }
        timer?.schedule(after: delay)
    }

    private func resultReady() {
        guard phase == .waiting else { return }
        phase = .done
        timer?.cancel()
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

    // MARK: auto: forward, and switch at the deadline

    private func forward() {
        let seconds: Duration
        if case .wait(let n) = preference { seconds = .seconds(n) } else { seconds = route.asyncAfter }
        armDeadline(after: seconds)
        phase = .slot
        let bound = LoopBound(self, loop: jobs.loop)
        gateToken = target.gate.makeToken()
        switch target.gate.acquire(.init(loop: jobs.loop, token: gateToken) { bound.value.slotGranted() }) {
        case .acquired:
            slotGranted()
        case .queued:
            break
        case .rejected:
            fail(.upstreamQueueFull)
        }
    }

    private func slotGranted() {
        switch phase {
        case .slot:
            guard let request else { target.gate.release(); return }
            let bound = LoopBound(self, loop: jobs.loop)
            let r = JobRunner(jobs: jobs, id: id, target: target, request: request, attempt: 1, isHead: isHead,
                              resendable: resendable, maxBody: jobsConfig.maxResultBody) { outcome in
                bound.value.exchangeEnded(outcome)
            }
            runner = r
            phase = .exchanging
            runnerStartedAt = wallClockMillis()
            runnerStart = monotonicNanos()
            r.start()
        case .committing:
            grantDuringCommit = true
        case .done where jobs.table.lookup(id) != nil:
            // Committed as queued while waiting: now an ordinary job.
            jobs.slotGranted(forJob: id, target: target)
        default:
            target.gate.release()
        }
    }

    private func exchangeEnded(_ outcome: JobRunner.Outcome) {
        switch phase {
        case .exchanging:
            // Whole within async_after: relayed as in sync, no job.
            phase = .done
            timer?.cancel()
            runner = nil
            jobs.table.observe(.init(route: route.label, method: method),
                                      millis: Int64((monotonicNanos() - runnerStart) / 1_000_000))
            if keyClaimed, let key = keyIndex { jobs.table.releaseClaim(key: key) }
            keyClaimed = false
            let applied: Preference? = if case .wait = preference { preference } else { nil }
            switch outcome {
            case .response(let response, _, _):
                jobs.relay(response, id: nil, to: client, preference: applied)
                removeSpoolFile(response.body.filePath)
            case .failure(let code, _, _):
                client?.respondError(code.httpError)
            }
            discardRequest()
        case .committing:
            runner = nil
            outcomeDuringCommit = outcome
        case .done where adopted:
            jobs.jobFinished(id, outcome)
        default:
            break
        }
    }

    private func deadline() {
        switch phase {
        case .slot:
            commit(record(status: .queued))
        case .exchanging:
            commit(record(status: .running))
        case .waiting:
            resultReady()
        default:
            break
        }
    }

    // MARK: Endings

    private func fail(_ error: HTTPError) {
        abandon()
        client?.respondError(error)
    }

    /// No job will exist: the exchange, the key and the bodies are let go.
    private func abandon() {
        if phase == .slot {
            // Still queued at the gate: leave the queue (no grant will come).
            target.gate.withdraw(gateToken)
        }
        phase = .done
        timer?.cancel()
        if reservation {
            reservation = false
            target.gate.unreserve()
        }
        runner?.abort()
        runner = nil
        if keyClaimed, let key = keyIndex { jobs.table.releaseClaim(key: key) }
        keyClaimed = false
        spool.discard()
        discardRequest()
    }

    private func discardRequest() {
        removeSpoolFile(request?.body.filePath)
        request = nil
    }

    func connectionClosed(connection: HTTPServerConnection) {
        switch phase {
        case .body, .slot, .exchanging:
            // No 202 was promised: the exchange is dropped (the upstream sees
            // the close), like a sync request whose client left.
            abandon()
        case .waiting:
            phase = .done
            timer?.cancel()
            if let token = waitToken { jobs.table.stopWaiting(id, token: token) }
        case .committing, .done:
            break  // the job stands
        }
    }

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}

/// Calls `body` with each preference token of a Prefer value
/// (`respond-async`, `wait=10`), parameters after `;` ignored.
func forEachPreference(_ value: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
    forEachToken(value) { token in
        var end = token.firstIndex(of: UInt8(ascii: ";")) ?? token.count
        while end > 0 && (token[end - 1] == 0x20 || token[end - 1] == 0x09) { end -= 1 }
        if end > 0 { body(UnsafeBufferPointer(rebasing: token[0..<end])) }
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
