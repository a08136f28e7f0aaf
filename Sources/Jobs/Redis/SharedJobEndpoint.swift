import Config
import HTTP
import Logging
import Loop
import Proxy
import Store

/// The job endpoint with the Redis store (SPEC §4, §5b): the job is looked
/// up in Redis, so any replica answers for any job, with the same 404s as
/// the SQLite store. A long poll waits for the job's `end`, published by
/// whichever replica ended it; a DELETE of a running job is published as
/// `cancel` and aborts the exchange wherever it runs.
final class SharedJobEndpoint: RequestHandler {
    private unowned let shared: SharedJobs
    private var client: HTTPServerConnection?
    private let target: JobLoop.JobTarget
    private let method: [UInt8]
    private let isHead: Bool
    private let credential: [UInt8]?
    private let base: [UInt8]
    enum Phase: Equatable {
        /// Looking the job up (no long poll).
        case open
        /// A long poll: `token` while a wake-up is registered (it is once).
        case polling(token: Int?)
        /// The long poll's time is up: the next look answers.
        case expired
        /// Answered, or its answer is on its way (a DELETE, a re-arm).
        case settled
    }

    private var phase = Phase.open
    /// The long poll's deadline.
    private var timer: Timer?

    private var jobs: JobLoop { shared.jobs }
    private var store: RedisJobStore { shared.store }
    private var id: JobID { target.id }

    init(shared: SharedJobs, client: HTTPServerConnection, target: JobLoop.JobTarget, method: UnsafeBufferPointer<UInt8>,
         isHead: Bool, credential: [UInt8]?, base: [UInt8]) {
        self.shared = shared
        self.client = client
        self.target = target
        self.method = Array(method)
        self.isHead = isHead
        self.credential = credential
        self.base = base
        if let seconds = target.wait, seconds > 0 {
            // Registered before the first look, so an end between the two is heard.
            listen()
            let t = Timer(loop: shared.jobs.loop) { [unowned self] in
                self.stopListening()
                self.phase = .expired
                self.look()
            }
            timer = t
            t.schedule(after: .seconds(seconds))
        }
        look()
    }

    private func listen() {
        let bound = LoopBound(self, loop: jobs.loop)
        phase = .polling(token: shared.wait(for: id) {
            let me = bound.value
            guard case .polling = me.phase else { return }
            me.phase = .polling(token: nil)  // a wake-up is once
            me.look()
        })
    }

    private func look() {
        guard phase != .settled else { return }
        store.lookup(id, on: jobs.loop) { [self] result in
            guard phase != .settled else { return }
            switch result {
            case .failure:
                finish { $0.respondError(.storeUnavailable) }
            case .success(let found):
                guard let record = found, jobs.isVisible(record, credential: credential) else {
                    finish { $0.respondError(.jobNotFound) }
                    return
                }
                act(on: record)
            }
        }
    }

    private func act(on record: JobRecord) {
        if let client { jobs.logJob(record.id, on: client) }
        let action = method.withUnsafeBufferPointer {
            JobLoop.endpointAction(target, method: $0, isHead: isHead, record: record)
        }
        switch action {
        case .poll(_, let result):
            if phase == .expired {
                finish { [self] c in
                    result ? jobs.answerResult(c, record, preference: nil, base: base)
                           : jobs.answerStatus(c, record, status: 200, base: base)
                }
            } else if phase == .polling(token: nil) {
                listen()  // woken by a missed message's catch-up: wait on
            }
        case .status:
            finish { [self] c in jobs.answerStatus(c, record, status: 200, base: base) }
        case .result:
            finish { [self] c in jobs.answerResult(c, record, preference: nil, base: base) }
        case .delete:
            delete(record)
        case .rearm:
            rearm(record)
        case .notAllowed(let allow):
            finish { c in c.respondError(.jobMethodNotAllowed) { h in h.header("Allow", allow) } }
        }
    }

    /// A pending job is canceled (200 with its status); an ended one deleted (204).
    private func delete(_ record: JobRecord) {
        settle()
        let now = wallClockMillis()
        guard record.status.isTerminal else {
            store.cancel(record, now: now, on: jobs.loop) { [self] result in
                switch result {
                case .failure: reply { $0.respondError(.storeUnavailable) }
                case .success(nil): reply { $0.respondError(.jobNotFound) }
                case .success(let before?) where before.isTerminal:
                    remove()  // it ended meanwhile
                case .success:
                    var r = record
                    r.status = .canceled
                    r.completedAt = now
                    reply { [self] c in jobs.answerStatus(c, r, status: 200, base: base) }
                }
            }
            return
        }
        remove()
    }

    private func remove() {
        store.remove(id, now: wallClockMillis(), on: jobs.loop) { [self] result in
            switch result {
            case .failure: reply { $0.respondError(.storeUnavailable) }
            case .success(false): reply { $0.respondError(.jobNotFound) }
            case .success(true):
                reply { c in
                    c.startResponse(status: 204, framing: .none(contentLength: nil)) { _ in }
                    c.endResponse()
                }
            }
        }
    }

    /// `POST .../callback`: the same rules as the SQLite store's (`JobCallbackRearm`).
    private func rearm(_ record: JobRecord) {
        guard record.status == .completed || record.status == .failed, let callback = record.callback else {
            finish { $0.respondError(.callbackNotRearmable) }
            return
        }
        if callback.isPending {
            finish { [self] c in jobs.answerStatus(c, record, status: 202, base: base) }
            return
        }
        settle()
        store.rearm(id, now: wallClockMillis(), on: jobs.loop) { [self] result in
            guard case .success = result else { return reply { $0.respondError(.storeUnavailable) } }
            store.lookup(id, on: jobs.loop) { [self] result in
                guard case .success(let r?) = result else { return reply { $0.respondError(.storeUnavailable) } }
                reply { [self] c in jobs.answerStatus(c, r, status: 202, base: base) }
            }
        }
    }

    /// Answers now and stops waiting.
    private func finish(_ respond: (HTTPServerConnection) -> Void) {
        settle()
        reply(respond)
    }

    /// No more looks or wake-ups: the answer is decided.
    private func settle() {
        stopListening()
        timer?.cancel()
        phase = .settled
    }

    private func reply(_ respond: (HTTPServerConnection) -> Void) {
        if let client { respond(client) }
    }

    private func stopListening() {
        if case .polling(let token?) = phase { shared.stopWaiting(id, token: token) }
    }

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {}
    func requestEnd(connection: HTTPServerConnection) {}

    func connectionClosed(connection: HTTPServerConnection) {
        settle()
    }

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}
