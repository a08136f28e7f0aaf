import Config
import HTTP
import Store
import Logging
import Loop
import Proxy

/// The job API's answers (SPEC §4): 202 Accepted, the status JSON, and
/// the result, replayed from the store.
extension JobLoop {
    /// `http://host` from the request, or `public_url`.
    func publicBase(for r: MessageReader) -> [UInt8] {
        if let base = config.publicBase { return base }
        // Reused: unless a deferred answer still holds the last one, this
        // allocates nothing.
        baseScratch.removeAll(keepingCapacity: true)
        baseScratch.append(contentsOf: "http://".utf8)
        if let host = r.hostValue { baseScratch.append(contentsOf: host) }
        return baseScratch
    }

    func jsonContext(for record: JobRecord, base: [UInt8]) -> JobJSON.Context {
        var estimate: Int64?
        if !record.status.isTerminal, let target = config.upstream(named: record.upstream) {
            // A queued job is in the gate's queue itself: what is ahead of it
            // is the rest of the queue and the exchanges in flight.
            let gate = target.gate
            let ahead = record.status == .queued ? max(0, gate.queued - 1) + gate.current : 0
            estimate = table.estimatedCompletion(of: record, ahead: ahead,
                                                      concurrency: gate.maxConcurrency, now: wallClockMillis())
        }
        return JobJSON.Context(base: base, jobsPath: config.jobsPath, estimate: estimate)
    }

    /// The suggested first poll: the estimate if there is one, else 2 s.
    func retryAfter(_ context: JobJSON.Context) -> Int64 {
        guard let estimate = context.estimate else { return 2 }
        let seconds = (estimate - wallClockMillis() + 999) / 1000
        return min(max(seconds, 1), 60)
    }

    /// 202 Accepted for a job (SPEC §4).
    func answerAccepted(_ client: HTTPServerConnection?, _ record: JobRecord, preference: JobIntake.Preference?, base: [UInt8]) {
        guard let client else { return }
        let context = jsonContext(for: record, base: base)
        let w = jsonWriter
        w.reset()
        JobJSON.writeAccepted(record, context, into: w)
        logJob(record.id, on: client)
        client.respond(status: 202, contentType: "application/json", body: w.bytes) { h in
            // With `public_url` (which may carry a path of its own) the same
            // absolute URL as `status_url`; else relative, as from the Host.
            h.append("Location: ")
            if let base = config.publicBase { h.append(base) }
            h.append(config.jobsPath)
            h.append(byte: UInt8(ascii: "/"))
            h.append(jobID: record.id)
            h.append("\r\n")
            h.header("Retry-After", decimal: retryAfter(context))
            h.header("Cache-Control", "no-store")
            h.header(jobID: record.id)
            writePreferenceApplied(preference, h)
        }
    }

    /// The status JSON with the given code (200 status, 202/502/504/409 result).
    func answerStatus(_ client: HTTPServerConnection?, _ record: JobRecord, status: Int, base: [UInt8],
                      preference: JobIntake.Preference? = nil) {
        guard let client else { return }
        let context = jsonContext(for: record, base: base)
        let w = jsonWriter
        w.reset()
        JobJSON.writeStatus(record, context, into: w)
        logJob(record.id, on: client)
        client.respond(status: status, contentType: "application/json", body: w.bytes) { h in
            h.header("Cache-Control", "no-store")
            if !record.status.isTerminal { h.header("Retry-After", decimal: retryAfter(context)) }
            writePreferenceApplied(preference, h)
        }
    }

    /// What `GET {jobs.path}/{id}/result` answers for the job as it is now.
    func answerResult(_ client: HTTPServerConnection?, _ record: JobRecord, preference: JobIntake.Preference?,
                      base: [UInt8]) {
        switch record.status {
        case .completed:
            let id = record.id
            readResponse(of: id) { [self] response in
                guard let response else {
                    client?.respondError(.storeReadFailed)
                    return
                }
                relay(response, id: id, to: client, preference: preference)
            }
        case .failed:
            answerStatus(client, record, status: record.error?.resultStatus ?? 502, base: base, preference: preference)
        case .canceled:
            answerStatus(client, record, status: 409, base: base, preference: preference)
        case .queued, .running:
            answerStatus(client, record, status: 202, base: base, preference: preference)
        }
    }

    /// A completed job's captured response (nil: unreadable), answered on this loop.
    func readResponse(of id: JobID, _ done: @escaping (JobResponse?) -> Void) {
        if let shared = engine.shared {
            shared.response(of: id, on: loop) { done((try? $0.get()) ?? nil) }
            return
        }
        let bound = LoopBound(done, loop: loop)
        store.response(of: id, on: loop) { bound.value((try? $0.get()) ?? nil) }
    }

    /// An `auto` exchange whole before the switch: relayed as in sync (no
    /// job exists), or its failure answered as sync answers it.
    func answerForwarded(_ outcome: JobRunner.Outcome, to client: HTTPServerConnection?, preference: JobPreference) {
        let applied: JobPreference? = if case .wait = preference { preference } else { nil }
        switch outcome {
        case .response(let response, _, _):
            relay(response, id: nil, to: client, preference: applied)
            removeSpoolFile(response.body.filePath)
        case .failure(let code, _, _):
            client?.respondError(code.httpError)
        }
    }

    /// A captured response, replayed: its status, reason, end-to-end
    /// headers and body bytes, plus `Job-Id` when it is a job's.
    func relay(_ response: JobResponse, id: JobID?, to client: HTTPServerConnection?, preference: JobIntake.Preference?) {
        guard let client else { return }
        let bodyless = response.status < 200 || response.status == 204 || response.status == 304
        var body: OutgoingBody?
        if !bodyless {
            guard let opened = openStoredBody(response.body) else {
                client.respondError(.storeReadFailed)
                return
            }
            body = opened
        }
        if let id { logJob(id, on: client) }
        let framing: ResponseFraming = bodyless ? .none(contentLength: nil) : .contentLength(response.body.size)
        response.reason.withUnsafeBufferPointer { reason in
            client.startResponse(status: response.status, reason: reason, framing: framing) { h in
                h.append(response.headers)
                if let id { h.header(jobID: id) }
                writePreferenceApplied(preference, h)
            }
        }
        switch body {
        case .bytes(let bytes)?:
            client.writeBody(bytes)
        case .file(let fd, let size)?:
            // Sent with sendfile: a replay costs no memory however large.
            guard client.writeBodyFile(fd, length: size) else {
                client.abort()
                return
            }
        case nil:
            break
        }
        client.endResponse()
    }
}

private func writePreferenceApplied(_ preference: JobIntake.Preference?, _ h: ByteWriter) {
    switch preference {
    case .respondAsync:
        h.header("Preference-Applied", "respond-async")
    case .wait(let n):
        h.append("Preference-Applied: wait=")
        h.append(decimal: Int64(n))
        h.append("\r\n")
    case .absent, .none:
        break
    }
}
