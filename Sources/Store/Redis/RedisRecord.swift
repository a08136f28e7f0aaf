/// A job as the Redis store keeps it: the record as the fields of one hash
/// (`PREFIX:job:ID`), readable with `HGETALL` by an operator and changed
/// field by field by the store's scripts; the request and the captured
/// response each as one string (`PREFIX:req:ID`, `PREFIX:res:ID`).
///
/// Field names are the status JSON's where there is one. Absent optional
/// values are absent fields, never empty strings, so a script can test a
/// field with `HEXISTS`.
public enum RedisRecord {
    /// The record's fields, in `HSET` order (name, value, name, value, ...).
    public static func fields(of r: JobRecord) -> [String] {
        var f: [String] = [
            "status", r.status.rawValue,
            "upstream", r.upstream,
            "route", r.route,
            "method", r.method,
            "path", r.path,
            "created_at", String(r.createdAt),
            "attempts", String(r.attempts),
            "resendable", r.resendable ? "1" : "0",
        ]
        func add(_ name: String, _ value: String?) {
            if let value { f += [name, value] }
        }
        add("started_at", r.startedAt.map { String($0) })
        add("completed_at", r.completedAt.map { String($0) })
        add("credential", r.credential.map(hex))
        add("idempotency_key", r.idempotencyKey)
        add("fingerprint", r.fingerprint.map(hex))
        add("content_type", r.contentType)
        add("error", r.error?.rawValue)
        add("error_message", r.errorMessage)
        add("response_status", r.responseStatus.map { String($0) })
        add("response_size", r.responseSize.map { String($0) })
        if let c = r.callback {
            add("callback_url", c.url)
            add("callback_status", c.status.rawValue)
            add("callback_attempts", String(c.attempts))
            add("callback_round", String(c.round))
            add("callback_error", c.lastError)
            add("callback_next_at", c.nextAttemptAt.map { String($0) })
        }
        return f
    }

    /// The record `HGETALL` gave back (name, value, ...); nil when the hash
    /// is missing or is not a job's (a required field absent or malformed).
    public static func record(id: JobID, from reply: RedisValue) -> JobRecord? {
        guard let items = reply.array, !items.isEmpty, items.count % 2 == 0 else { return nil }
        var f: [String: String] = [:]
        f.reserveCapacity(items.count / 2)
        var i = 0
        while i < items.count {
            guard let k = items[i].string, let v = items[i + 1].string else { return nil }
            f[k] = v
            i += 2
        }
        guard let status = f["status"].flatMap(JobStatus.init(rawValue:)),
              let upstream = f["upstream"], let route = f["route"], let method = f["method"], let path = f["path"],
              let createdAt = f["created_at"].flatMap({ Int64($0) }),
              let attempts = f["attempts"].flatMap({ Int($0) }),
              let resendable = f["resendable"]
        else { return nil }
        var callback: JobCallback?
        if let url = f["callback_url"] {
            guard let s = f["callback_status"].flatMap(JobCallback.Status.init(rawValue:)) else { return nil }
            callback = JobCallback(
                url: url, status: s, attempts: f["callback_attempts"].flatMap { Int($0) } ?? 0,
                round: f["callback_round"].flatMap { Int($0) } ?? 1, lastError: f["callback_error"],
                nextAttemptAt: f["callback_next_at"].flatMap { Int64($0) })
        }
        var r = JobRecord(
            id: id, status: status, upstream: upstream, route: route, method: method, path: path,
            createdAt: createdAt, startedAt: f["started_at"].flatMap { Int64($0) },
            completedAt: f["completed_at"].flatMap { Int64($0) }, attempts: attempts, resendable: resendable == "1",
            credential: f["credential"].flatMap(unhex), idempotencyKey: f["idempotency_key"],
            fingerprint: f["fingerprint"].flatMap(unhex), callback: callback)
        r.contentType = f["content_type"]
        r.error = f["error"].flatMap(JobErrorCode.init(rawValue:))
        r.errorMessage = f["error_message"]
        r.responseStatus = f["response_status"].flatMap { Int($0) }
        r.responseSize = f["response_size"].flatMap { Int64($0) }
        return r
    }

    // MARK: Bodies

    /// `PREFIX:req:ID`: a flag byte (1: the request declared a body), the
    /// head's length (4 bytes, big-endian), the head, the body.
    public static func encode(_ request: JobRequest, body: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(5 + request.head.count + body.count)
        out.append(request.declaresBody ? 1 : 0)
        appendLength(request.head.count, to: &out)
        out += request.head
        out += body
        return out
    }

    public static func request(from bytes: [UInt8]) -> JobRequest? {
        guard bytes.count >= 5, bytes[0] <= 1 else { return nil }
        let headLength = readLength(bytes, at: 1)
        guard 5 + headLength <= bytes.count else { return nil }
        return JobRequest(head: Array(bytes[5..<(5 + headLength)]), body: .inline(Array(bytes[(5 + headLength)...])),
                          declaresBody: bytes[0] == 1)
    }

    /// `PREFIX:res:ID`: the status (2 bytes), the reason's length (2) and
    /// the reason, the header lines' length (4) and the lines, the body.
    public static func encode(_ response: JobResponse, body: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(8 + response.reason.count + response.headers.count + body.count)
        out.append(UInt8(truncatingIfNeeded: response.status >> 8))
        out.append(UInt8(truncatingIfNeeded: response.status))
        let reason = response.reason.prefix(0xFFFF)
        out.append(UInt8(truncatingIfNeeded: reason.count >> 8))
        out.append(UInt8(truncatingIfNeeded: reason.count))
        out += reason
        appendLength(response.headers.count, to: &out)
        out += response.headers
        out += body
        return out
    }

    public static func response(from bytes: [UInt8]) -> JobResponse? {
        guard bytes.count >= 8 else { return nil }
        let status = Int(bytes[0]) << 8 | Int(bytes[1])
        let reasonLength = Int(bytes[2]) << 8 | Int(bytes[3])
        var at = 4 + reasonLength
        guard at + 4 <= bytes.count else { return nil }
        let reason = Array(bytes[4..<at])
        let headersLength = readLength(bytes, at: at)
        at += 4
        guard at + headersLength <= bytes.count else { return nil }
        return JobResponse(status: status, reason: reason, headers: Array(bytes[at..<(at + headersLength)]),
                           body: .inline(Array(bytes[(at + headersLength)...])))
    }

    private static func appendLength(_ n: Int, to out: inout [UInt8]) {
        let v = UInt32(truncatingIfNeeded: n)
        out += [UInt8(v >> 24), UInt8(truncatingIfNeeded: v >> 16), UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
    }

    private static func readLength(_ b: [UInt8], at i: Int) -> Int {
        Int(b[i]) << 24 | Int(b[i + 1]) << 16 | Int(b[i + 2]) << 8 | Int(b[i + 3])
    }
}

private func hex(_ bytes: [UInt8]) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 0xF)])
    }
    return String(decoding: out, as: UTF8.self)
}

private func unhex(_ s: String) -> [UInt8]? {
    let u = Array(s.utf8)
    guard u.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(u.count / 2)
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
    var i = 0
    while i < u.count {
        guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
        i += 2
    }
    return out
}
