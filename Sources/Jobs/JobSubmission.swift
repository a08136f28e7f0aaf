import Config
import HTTP
import Proxy
import Store

/// What a request on an `async` or `auto` route brings to the job it may
/// become, taken from its head once: the re-serialized request line and
/// headers, the method and path, the credential, the Idempotency-Key and
/// the client's preference. Either store's intake builds its record from it.
struct JobSubmission {
    let head: [UInt8]
    let method: String
    let path: String
    let isHead: Bool
    /// Safe to send again (SPEC §5): an idempotent method or a key.
    let resendable: Bool
    /// The request declared a body (even an empty one).
    let declaresBody: Bool
    let credential: [UInt8]?
    let idempotencyKey: String?
    let preference: JobPreference
    let route: CompiledRoute
    let callback: JobCallback?

    init(_ r: MessageReader, route: CompiledRoute, client: HTTPServerConnection, jobs: JobLoop,
         credential: [UInt8]?, callback: JobCallback?) {
        self.route = route
        self.callback = callback
        method = String(decoding: r.methodName, as: UTF8.self)
        path = String(decoding: r.path, as: UTF8.self)
        isHead = r.isHead
        self.credential = credential
        let key = r.first(named: "idempotency-key").map { String(decoding: r.value($0), as: UTF8.self) }
        idempotencyKey = key.flatMap { $0.isEmpty ? nil : $0 }
        resendable = r.isIdempotent || idempotencyKey != nil
        switch r.framing {
        case .none: declaresBody = r.declaredContentLength != nil
        default: declaresBody = true
        }
        preference = JobPreference(of: r, maxWait: jobs.config.configuration.jobs.maxWait)
        let w = jobs.proxy.scratchWriter
        RequestSerializer.write(request: r, peer: client.peer, target: route.upstream, into: w, framing: false)
        head = Array(w.bytes)
    }

    /// The key as it is indexed (within the credential).
    var keyIndex: String? { idempotencyKey.map { JobRecord.keyIndex(key: $0, credential: credential) } }

    /// The fingerprint's start (method and path), fed with the body as it
    /// arrives; nil without an Idempotency-Key.
    func startFingerprint() -> Fingerprint? {
        guard idempotencyKey != nil else { return nil }
        var f = Fingerprint()
        f.update(Array(method.utf8))
        f.separate()
        f.update(Array(path.utf8))
        f.separate()
        return f
    }

    /// The fingerprint over method, path, body and credential.
    func finishFingerprint(_ fingerprint: Fingerprint?) -> [UInt8]? {
        guard var f = fingerprint else { return nil }
        f.separate()
        if let credential { f.update(credential) }
        return f.finish()
    }

    /// `startedAt`: an `auto` exchange already under way, whose job is
    /// `running` in its first attempt.
    func record(id: JobID, status: JobStatus, createdAt: Int64, fingerprint: [UInt8]?, startedAt: Int64? = nil) -> JobRecord {
        var r = JobRecord(id: id, status: status, upstream: route.upstream.name, route: route.label, method: method, path: path,
                          createdAt: createdAt, resendable: resendable, credential: credential,
                          idempotencyKey: idempotencyKey, fingerprint: fingerprint, callback: callback)
        if status == .running {
            r.startedAt = startedAt
            r.attempts = 1
        }
        return r
    }

    /// The `auto` exchange of this request (attempt 1); `ended` hears how it ended.
    func runner(jobs: JobLoop, id: JobID, request: JobRequest, ended: @escaping (JobRunner.Outcome) -> Void) -> JobRunner {
        JobRunner(jobs: jobs, id: id, target: route.upstream, request: request, attempt: 1, isHead: isHead,
                  resendable: resendable, maxBody: jobs.config.configuration.jobs.maxResultBody, finished: ended)
    }
}

extension BodySpool {
    /// A piece of a job's request body, spooled to the job's file beyond the
    /// threshold; false when the spool failed (the request is refused).
    func take(_ buffer: EventBuffer, id: JobID, jobs: JobLoop) -> Bool {
        do {
            try append(buffer, limit: .max, spoolPath: jobs.engine.spoolPath(id, "req"))
            return true
        } catch {
            return false
        }
    }
}
