import Config
import HTTP
import Logging
import Loop
import Meters
import Proxy
import Store

/// A request on an `async` route (or with `Prefer: respond-async` on an
/// `auto` one) with the Redis store (SPEC §5b): the body
/// is collected, the job written and queued in one script (`create`, which
/// also settles its Idempotency-Key), and the 202 sent once Redis (and
/// `wait_replicas` replicas) has it. Whichever replica has a slot claims
/// it. With `Prefer: wait=N` the answer waits up to N seconds for the
/// job's end, heard on this loop's subscription.
///
/// Redis down: 503 + Retry-After before a job exists, at once when this
/// loop's connection is known lost, else when the command's deadline passes.
final class SharedIntake: RequestHandler {
    enum Phase {
        case body
        /// `create` in flight.
        case creating
        /// Prefer: wait=N: the job exists (as `record` says); its end is awaited.
        case waiting(token: Int, record: JobRecord)
        case done
    }

    private unowned let shared: SharedJobs
    private var client: HTTPServerConnection?
    private let submission: JobSubmission
    private let id: JobID
    private let base: [UInt8]
    private let spool = BodySpool()
    private var phase = Phase.body
    private var timer: Timer?

    private var jobs: JobLoop { shared.jobs }

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

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {
        guard case .body = phase else {
            buffer.removeAll()
            return
        }
        if !spool.take(buffer, id: id, jobs: jobs) { refuse(.spoolFailed) }
    }

    func requestEnd(connection: HTTPServerConnection) {
        guard case .body = phase else { return }
        let fingerprint = submission.finishFingerprint(spool.fingerprint)
        guard let stored = try? spool.finish(), let body = readBody(stored) else {
            refuse(.spoolFailed)
            return
        }
        guard shared.store.isHealthy else {
            refuse(.storeUnavailable)
            return
        }
        let record = submission.record(id: id, status: .queued, createdAt: wallClockMillis(), fingerprint: fingerprint)
        let request = JobRequest(head: submission.head, body: .empty, declaresBody: submission.declaresBody)
        phase = .creating
        shared.store.create(record, request: request, body: body, keyIndex: submission.keyIndex, on: jobs.loop) { [self] result in
            created(record, result)
        }
    }

    private func created(_ record: JobRecord, _ result: Result<RedisJobStore.Created, RedisUnavailable>) {
        guard case .creating = phase else { return }
        switch result {
        case .failure(let error):
            jobs.log.error("job commit failed", metadata: ["job": "\(id)", "error": "\(error)"])
            refuse(.storeUnavailable)
        case .success(.existing(let existing)):
            // The key's job: the same request gets it again, another one 422.
            guard let existing, jobs.isVisible(existing, credential: submission.credential) else {
                refuse(.idempotencyKeyInUse)
                return
            }
            guard existing.fingerprint == record.fingerprint else {
                refuse(.idempotencyKeyMismatch)
                return
            }
            phase = .done
            jobs.answerAccepted(client, existing, preference: nil, base: base)
        case .success(.created):
            jobs.proxy.meters?.add(MeterKey(.jobsCreated, slot: submission.route.meterSlot, submission.route.mode.meterIndex))
            shared.dispatcher.wake(record.upstream)
            if case .wait(let seconds) = submission.preference, client != nil {
                waitForEnd(record, seconds: seconds)
            } else {
                phase = .done
                let applied: JobPreference? = submission.preference == .absent ? nil : submission.preference
                jobs.answerAccepted(client, record, preference: applied, base: base)
            }
        }
    }

    private func waitForEnd(_ record: JobRecord, seconds: Int) {
        let bound = LoopBound(self, loop: jobs.loop)
        phase = .waiting(token: shared.wait(for: id) { bound.value.lookAgain() }, record: record)
        let t = Timer(loop: jobs.loop) { [unowned self] in self.answerNow() }
        timer = t
        t.schedule(after: .seconds(seconds))
    }

    /// Woken: answered with the result if the job ended, else waiting on.
    private func lookAgain() {
        guard case .waiting(_, let record) = phase else { return }
        let bound = LoopBound(self, loop: jobs.loop)
        phase = .waiting(token: shared.wait(for: id) { bound.value.lookAgain() }, record: record)
        shared.store.lookup(id, on: jobs.loop) { [self] result in
            if case .success(let r?) = result, r.status.isTerminal { answer(r) }
        }
    }

    private func answerNow() {
        guard case .waiting = phase else { return }
        shared.store.lookup(id, on: jobs.loop) { [self] result in
            guard case .waiting(_, let record) = phase else { return }
            switch result {
            case .success(let r?): answer(r)
            case .success(nil): answer(nil)
            case .failure: answer(record)  // the job exists: its 202 stands
            }
        }
    }

    private func answer(_ r: JobRecord?) {
        guard case .waiting(let token, _) = phase else { return }
        shared.stopWaiting(id, token: token)
        phase = .done
        timer?.cancel()
        guard let r else {
            client?.respondError(.jobNotFound)
            return
        }
        if r.status.isTerminal {
            jobs.answerResult(client, r, preference: submission.preference, base: base)
        } else {
            jobs.answerAccepted(client, r, preference: submission.preference, base: base)
        }
    }

    private func refuse(_ error: HTTPError) {
        phase = .done
        spool.discard()
        client?.respondError(error)
    }

    func connectionClosed(connection: HTTPServerConnection) {
        // A job already asked for stays: the client may poll it later.
        if case .waiting(let token, _) = phase { shared.stopWaiting(id, token: token) }
        if case .body = phase { spool.discard() }
        if case .creating = phase {} else { phase = .done }
        timer?.cancel()
    }

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}
