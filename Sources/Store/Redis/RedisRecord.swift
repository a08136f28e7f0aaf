import CHiredis

#if canImport(Glibc)
import Glibc
#endif

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
        var fields = Fields()
        var i = 0
        while i < items.count {
            guard case .bulk(let k) = items[i], case .bulk(let v) = items[i + 1] else { return nil }
            k.withUnsafeBytes { k in v.withUnsafeBytes { v in fields.set(k, v) } }
            i += 2
        }
        return fields.record(id: id)
    }

    /// The same, read from hiredis's reply in place.
    static func record(id: JobID, reply r: UnsafePointer<redisReply>) -> JobRecord? {
        let reply = r.pointee
        guard reply.type == REDIS_REPLY_ARRAY, reply.elements > 0, reply.elements % 2 == 0 else { return nil }
        var fields = Fields()
        var i = 0
        while i < reply.elements {
            guard let k = reply.element[i]?.pointee, let v = reply.element[i + 1]?.pointee,
                  k.type == REDIS_REPLY_STRING, v.type == REDIS_REPLY_STRING else { return nil }
            fields.set(UnsafeRawBufferPointer(start: k.str, count: k.len), UnsafeRawBufferPointer(start: v.str, count: v.len))
            i += 2
        }
        return fields.record(id: id)
    }

    /// A record read field by field from the reply's bytes: no dictionary
    /// and no string but the values kept as strings (a status read is one
    /// of these per request).
    public struct Fields {
        private var status: JobStatus?
        private var upstream: String?, route: String?, method: String?, path: String?
        private var createdAt: Int64?, startedAt: Int64?, completedAt: Int64?
        private var attempts: Int64?
        private var resendable: Bool?
        private var credential: [UInt8]?, fingerprint: [UInt8]?
        private var idempotencyKey: String?, contentType: String?, errorMessage: String?
        private var error: JobErrorCode?
        private var responseStatus: Int64?, responseSize: Int64?
        private var callbackURL: String?, callbackStatus: JobCallback.Status?
        private var callbackAttempts: Int64?, callbackRound: Int64?, callbackNextAt: Int64?
        private var callbackError: String?
        public init() {}

        public mutating func set(_ key: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
            func text() -> String { String(decoding: value, as: UTF8.self) }
            func number() -> Int64? { decimal(value) }
            switch key.count {
            case 4 where same(key, "path"): path = text()
            case 5 where same(key, "route"): route = text()
            case 5 where same(key, "error"): error = JobErrorCode(rawValue: text())
            case 6 where same(key, "status"): status = JobStatus(rawValue: text())
            case 6 where same(key, "method"): method = text()
            case 8 where same(key, "upstream"): upstream = text()
            case 8 where same(key, "attempts"): attempts = number()
            case 10 where same(key, "created_at"): createdAt = number()
            case 10 where same(key, "started_at"): startedAt = number()
            case 10 where same(key, "credential"): credential = unhex(value)
            case 10 where same(key, "resendable"): resendable = value.count == 1 && value[0] == UInt8(ascii: "1")
            case 11 where same(key, "fingerprint"): fingerprint = unhex(value)
            case 12 where same(key, "completed_at"): completedAt = number()
            case 12 where same(key, "content_type"): contentType = text()
            case 12 where same(key, "callback_url"): callbackURL = text()
            case 13 where same(key, "error_message"): errorMessage = text()
            case 13 where same(key, "response_size"): responseSize = number()
            case 14 where same(key, "callback_round"): callbackRound = number()
            case 14 where same(key, "callback_error"): callbackError = text()
            case 15 where same(key, "idempotency_key"): idempotencyKey = text()
            case 15 where same(key, "response_status"): responseStatus = number()
            case 15 where same(key, "callback_status"): callbackStatus = JobCallback.Status(rawValue: text())
            case 16 where same(key, "callback_next_at"): callbackNextAt = number()
            case 17 where same(key, "callback_attempts"): callbackAttempts = number()
            default: break  // `owner`, `idempotency_ref`, ...: the store's own
            }
        }

        public func record(id: JobID) -> JobRecord? {
            guard let status, let upstream, let route, let method, let path, let createdAt,
                  let attempts, let resendable else { return nil }
            var callback: JobCallback?
            if let url = callbackURL {
                guard let s = callbackStatus else { return nil }
                callback = JobCallback(url: url, status: s, attempts: Int(callbackAttempts ?? 0),
                                       round: Int(callbackRound ?? 1), lastError: callbackError,
                                       nextAttemptAt: callbackNextAt)
            }
            var r = JobRecord(
                id: id, status: status, upstream: upstream, route: route, method: method, path: path,
                createdAt: createdAt, startedAt: startedAt, completedAt: completedAt, attempts: Int(attempts),
                resendable: resendable, credential: credential, idempotencyKey: idempotencyKey,
                fingerprint: fingerprint, callback: callback)
            r.contentType = contentType
            r.error = error
            r.errorMessage = errorMessage
            r.responseStatus = responseStatus.map { Int($0) }
            r.responseSize = responseSize
            return r
        }
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

/// Whether `bytes` are `name`'s.
private func same(_ bytes: UnsafeRawBufferPointer, _ name: StaticString) -> Bool {
    bytes.count == name.utf8CodeUnitCount && memcmp(bytes.baseAddress!, name.utf8Start, bytes.count) == 0
}

/// A decimal integer, optionally negative, that fits; nil otherwise.
private func decimal(_ bytes: UnsafeRawBufferPointer) -> Int64? {
    var i = 0, negative = false
    if bytes.first == UInt8(ascii: "-") {
        negative = true
        i = 1
    }
    guard i < bytes.count, bytes.count - i <= 18 else { return nil }
    var n: Int64 = 0
    while i < bytes.count {
        let d = bytes[i] &- 0x30
        guard d < 10 else { return nil }
        n = n * 10 + Int64(d)
        i += 1
    }
    return negative ? -n : n
}

private func unhex(_ u: UnsafeRawBufferPointer) -> [UInt8]? {
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
