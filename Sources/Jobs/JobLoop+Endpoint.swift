public import Config
public import HTTP
public import Store
public import Logging
public import Loop
public import Proxy

/// `{jobs.path}/{id}`, `{jobs.path}/{id}/result` and
/// `{jobs.path}/{id}/callback` (SPEC §4): status, result replay, cancel and
/// delete, long polls, re-arming a callback. Unknown, expired, deleted and
/// other credentials' jobs all get the same 404.
extension JobLoop {
    struct JobTarget {
        var id: JobID
        var result: Bool
        /// `/callback`: POST re-arms the job's callback.
        var callback = false
        /// `?wait=S`, capped by `jobs.max_wait`.
        var wait: Int?
    }

    /// What a request to the job endpoint asks of a job that exists.
    enum EndpointAction: Equatable {
        case status
        case result
        /// A long poll of the status (or, with `result`, of the result).
        case poll(seconds: Int, result: Bool)
        case delete
        case rearm
        /// 405 with this `Allow`.
        case notAllowed(allow: String)
    }

    static func endpointAction(_ t: JobTarget, method: UnsafeBufferPointer<UInt8>, isHead: Bool,
                               record: JobRecord) -> EndpointAction {
        if t.callback {
            return bytesEqual(method, post) ? .rearm : .notAllowed(allow: "POST")
        }
        if bytesEqual(method, get) || isHead {
            if let seconds = t.wait, seconds > 0, !record.status.isTerminal { return .poll(seconds: seconds, result: t.result) }
            return t.result ? .result : .status
        }
        if bytesEqual(method, delete) && !t.result { return .delete }
        return .notAllowed(allow: t.result ? "GET, HEAD" : "GET, HEAD, DELETE")
    }

    public func jobEndpoint(for r: MessageReader, on client: HTTPServerConnection) -> any RequestHandler {
        guard let t = parseJobTarget(r.path) else { return proxy.refuse(.jobNotFound, on: client) }
        if let shared {
            return SharedJobEndpoint(shared: shared, client: client, target: t, method: r.methodName, isHead: r.isHead,
                                     credential: credential(of: r), base: publicBase(for: r))
        }
        guard let record = visibleJob(t.id, for: r) else { return proxy.refuse(.jobNotFound, on: client) }
        logJob(record.id, on: client)
        let base = publicBase(for: r)
        switch Self.endpointAction(t, method: r.methodName, isHead: r.isHead, record: record) {
        case .rearm:
            return JobCallbackRearm(jobs: self, client: client, record: record, base: base)
        case .poll(let seconds, let result):
            return JobPoll(jobs: self, client: client, id: record.id, result: result, base: base, seconds: seconds)
        case .result:
            answerResult(client, record, preference: nil, base: base)
        case .status:
            answerStatus(client, record, status: 200, base: base)
        case .delete:
            return JobDelete(jobs: self, client: client, record: record, base: base)
        case .notAllowed(let allow):
            client.respondError(.jobMethodNotAllowed) { h in h.header("Allow", allow) }
        }
        return proxy.answered
    }

    static let get: [UInt8] = Array("GET".utf8)
    static let delete: [UInt8] = Array("DELETE".utf8)
    static let post: [UInt8] = Array("POST".utf8)

    /// The job if this request may see it: it exists, has not outlived
    /// `result_ttl`, and carries the credential it was bound to.
    func visibleJob(_ id: JobID, for r: MessageReader) -> JobRecord? {
        table.lookup(id).flatMap { isVisible($0, credential: credential(of: r)) ? $0 : nil }
    }

    /// Not past `result_ttl`, and bound to `credential` if to anything.
    func isVisible(_ record: JobRecord, credential: [UInt8]?) -> Bool {
        !record.isExpired(now: wallClockMillis(), ttlMillis: config.configuration.jobs.resultTTL.nanoseconds / 1_000_000)
            && record.credential == credential
    }

    /// The hash of the `jobs.bind_to` credential the request carries.
    func credential(of r: MessageReader) -> [UInt8]? {
        guard let name = config.bindHeader else { return nil }
        guard let f = r.fields.first(where: { headerName(r.name($0), equals: name) }) else { return nil }
        return Fingerprint.credential(UnsafeRawBufferPointer(r.value(f)))
    }

    /// `/{id}`, `/{id}/result`, each with an optional `?wait=S`.
    func parseJobTarget(_ path: UnsafeBufferPointer<UInt8>) -> JobTarget? {
        let prefix = config.jobsPath.count
        guard path.count > prefix + 1, path[prefix] == UInt8(ascii: "/") else { return nil }
        var end = path.count
        var query: UnsafeBufferPointer<UInt8>?
        if let q = path.firstIndex(of: UInt8(ascii: "?")) {
            end = q
            query = UnsafeBufferPointer(rebasing: path[(q + 1)...])
        }
        var rest = UnsafeBufferPointer(rebasing: path[(prefix + 1)..<end])
        var result = false, callback = false
        let suffix = "/result".utf8, callbackSuffix = "/callback".utf8
        if rest.count > suffix.count, rest.suffix(suffix.count).elementsEqual(suffix) {
            result = true
            rest = UnsafeBufferPointer(rebasing: rest[..<(rest.count - suffix.count)])
        } else if rest.count > callbackSuffix.count, rest.suffix(callbackSuffix.count).elementsEqual(callbackSuffix) {
            callback = true
            rest = UnsafeBufferPointer(rebasing: rest[..<(rest.count - callbackSuffix.count)])
        }
        guard let id = JobID(utf8: rest) else { return nil }
        var wait: Int?
        if let query {
            forEachQueryParameter(query) { name, value in
                if name.elementsEqual("wait".utf8), let s = parseSeconds(value) {
                    wait = min(s, Int(config.configuration.jobs.maxWait.components.seconds))
                }
            }
        }
        return JobTarget(id: id, result: result, callback: callback, wait: wait)
    }
}

func forEachQueryParameter(_ query: UnsafeBufferPointer<UInt8>,
                           _ body: (UnsafeBufferPointer<UInt8>, UnsafeBufferPointer<UInt8>) -> Void) {
    var start = 0
    while start <= query.count {
        let end = query[start...].firstIndex(of: UInt8(ascii: "&")) ?? query.count
        let pair = UnsafeBufferPointer(rebasing: query[start..<end])
        if let eq = pair.firstIndex(of: UInt8(ascii: "=")) {
            body(UnsafeBufferPointer(rebasing: pair[..<eq]), UnsafeBufferPointer(rebasing: pair[(eq + 1)...]))
        } else if !pair.isEmpty {
            body(pair, UnsafeBufferPointer(start: nil, count: 0))
        }
        start = end + 1
    }
}
