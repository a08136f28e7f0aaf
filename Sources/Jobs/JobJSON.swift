import Config
import HTTP
import Store
import Logging
import Loop
import Proxy
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension ByteWriter {
    func append(jobID id: JobID) {
        append(count: JobID.textLength) { id.encode(into: $0) }
    }

    /// `Job-Id: {id}\r\n`.
    func header(jobID id: JobID) {
        append("Job-Id: ")
        append(jobID: id)
        append("\r\n")
    }
}

/// The status JSON of SPEC §4, and the 202 body built from it.
enum JobJSON {
    struct Context {
        /// `http://host` or `public_url`, without a trailing slash.
        var base: [UInt8]
        var jobsPath: [UInt8]
        var estimate: Int64?
    }

    static func writeStatus(_ r: JobRecord, _ c: Context, into w: ByteWriter) {
        w.append("{\"job_id\":\"")
        w.append(jobID: r.id)
        w.append("\",\"status\":\"")
        w.append(string: r.status.rawValue)
        w.append("\",\"created_at\":")
        time(r.createdAt, w)
        w.append(",\"started_at\":")
        time(r.startedAt, w)
        w.append(",\"completed_at\":")
        time(r.completedAt, w)
        w.append(",\"attempts\":")
        w.append(decimal: Int64(r.attempts))
        w.append(",\"request\":{\"method\":\"")
        w.appendJSONEscaped(r.method)
        w.append("\",\"path\":\"")
        w.appendJSONEscaped(r.path)
        w.append("\"}")
        if !r.status.isTerminal {
            w.append(",\"estimated_completion\":")
            time(c.estimate, w)
        }
        if r.status == .completed, let status = r.responseStatus {
            w.append(",\"response\":{\"status\":")
            w.append(decimal: Int64(status))
            w.append(",\"content_type\":")
            w.appendJSONString(r.contentType)
            w.append(",\"size\":")
            w.append(decimal: r.responseSize ?? 0)
            w.append("}")
        }
        if r.status == .failed, let code = r.error {
            w.append(",\"error\":{\"code\":\"")
            w.append(string: code.rawValue)
            w.append("\",\"message\":\"")
            w.appendJSONEscaped(r.errorMessage ?? code.defaultMessage)
            w.append("\"}")
        }
        if let callback = r.callback {
            w.append(",\"callback\":{\"url\":")
            w.appendJSONString(callback.url)
            w.append(",\"status\":\"")
            w.append(string: callback.status.json)
            w.append("\",\"attempts\":")
            w.append(decimal: Int64(callback.attempts))
            w.append(",\"last_error\":")
            w.appendJSONString(callback.lastError)
            if callback.status.json == "pending" {
                w.append(",\"next_attempt_at\":")
                time(callback.nextAttemptAt, w)
            }
            w.append("}")
        }
        w.append(",\"status_url\":\"")
        url(r.id, c, result: false, w)
        w.append("\",\"result_url\":\"")
        url(r.id, c, result: true, w)
        w.append("\"}")
    }

    /// The 202 body: SPEC §4's fields, in its order.
    static func writeAccepted(_ r: JobRecord, _ c: Context, into w: ByteWriter) {
        w.append("{\"job_id\":\"")
        w.append(jobID: r.id)
        w.append("\",\"status\":\"")
        w.append(string: r.status.rawValue)
        w.append("\",\"status_url\":\"")
        url(r.id, c, result: false, w)
        w.append("\",\"result_url\":\"")
        url(r.id, c, result: true, w)
        w.append("\",\"created_at\":")
        time(r.createdAt, w)
        w.append(",\"estimated_completion\":")
        time(c.estimate, w)
        w.append("}")
    }

    static func url(_ id: JobID, _ c: Context, result: Bool, _ w: ByteWriter) {
        c.base.withUnsafeBufferPointer { w.appendJSONEscaped($0) }
        c.jobsPath.withUnsafeBufferPointer { w.appendJSONEscaped($0) }
        w.append(byte: UInt8(ascii: "/"))
        w.append(jobID: id)
        if result { w.append("/result") }
    }

    static func time(_ millis: Int64?, _ w: ByteWriter) {
        guard let millis else {
            w.append("null")
            return
        }
        w.append(byte: UInt8(ascii: "\""))
        w.appendTimestamp(millis: millis)
        w.append(byte: UInt8(ascii: "\""))
    }
}
