import HTTP
import Loop
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// One JSON line per answered request (SPEC §7), buffered per loop and
/// written to stdout in batches: a short timer or a full buffer flushes.
final class AccessLog {
    private let writer = ByteWriter(capacity: 64 * 1024)
    private var flushTimer: Timer!
    private static let stdoutLock = Mutex<Void>(())
    /// `jobs.path`: a job endpoint's id is logged cut short.
    var jobsPath: [UInt8] = []

    init(loop: EventLoop) {
        flushTimer = Timer(loop: loop) { [unowned self] in self.flush() }
    }

    deinit { flush() }

    /// `now`: the monotonic time the exchange ended.
    func record(_ c: HTTPServerConnection, status: Int, now monotonicNow: UInt64) {
        let now = wallClockMillis()
        let w = writer
        w.append("{\"ts\":\"")
        writer.appendTimestamp(millis: now)
        w.append("\",\"method\":\"")
        w.append(c.reader.methodName)
        w.append("\",\"path\":\"")
        appendTarget(c.reader)
        w.append("\",\"status\":")
        w.append(decimal: Int64(status))
        w.append(",\"duration_ms\":")
        let micros = Int64((monotonicNow &- c.requestStart) / 1000)
        w.append(decimal: micros / 1000)
        w.append(byte: UInt8(ascii: "."))
        let frac = micros % 1000
        if frac < 100 { w.append(byte: 0x30) }
        if frac < 10 { w.append(byte: 0x30) }
        w.append(decimal: frac)
        w.append(",\"upstream\":")
        w.appendJSONString(c.logUpstream)
        // Job ids are capabilities: only `JobID.logPrefix` is ever set here.
        w.append(",\"job\":")
        w.appendJSONString(c.logJob)
        w.append(",\"client\":\"")
        w.append(c.peer)
        w.append("\"}\n")
        if w.count > 32 * 1024 {
            flush()
        } else if !flushTimer.isScheduled {
            flushTimer.schedule(after: .milliseconds(100))
        }
    }

    /// The request target, JSON-escaped (its bytes are validated visible
    /// ASCII; only `"` and `\` need it). On the job endpoints the id is cut
    /// to `JobID.logPrefix`'s 8 characters and an ellipsis: ids are
    /// capabilities (SPEC §5), and the path is where they travel.
    private func appendTarget(_ r: MessageReader) {
        let target = r.target
        let path = r.path
        let idStart = target.count - path.count + jobsPath.count + 1
        guard !jobsPath.isEmpty, path.count > jobsPath.count + 1, hasPrefix(path, jobsPath),
              path[jobsPath.count] == UInt8(ascii: "/") else {
            writer.appendJSONEscaped(target)
            return
        }
        var idEnd = idStart
        while idEnd < target.count && target[idEnd] != UInt8(ascii: "/") && target[idEnd] != UInt8(ascii: "?") {
            idEnd += 1
        }
        let shown = min(idEnd, idStart + 8)
        writer.appendJSONEscaped(UnsafeBufferPointer(rebasing: target[..<shown]))
        if shown < idEnd { writer.append("…") }
        writer.appendJSONEscaped(UnsafeBufferPointer(rebasing: target[idEnd...]))
    }

    func flush() {
        guard writer.count > 0 else { return }
        AccessLog.stdoutLock.withLock { _ in
            var p = UnsafeRawPointer(writer.base)
            var left = writer.count
            while left > 0 {
                let n = write(1, p, left)
                if n <= 0 { break }
                p += n
                left -= n
            }
        }
        writer.reset()
    }
}
