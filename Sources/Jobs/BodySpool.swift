import HTTP
import Store

#if canImport(Glibc)
import Glibc
#endif

/// Collects a body for a job: in memory up to `threshold`, then in a file
/// (created 0600) under the jobs directory, so memory stays bounded however
/// large the body (SPEC §5). Bytes are moved, never copied, until `finish`.
final class BodySpool {
    enum Failure: Error { case tooLarge, io(Int32) }

    let threshold: Int
    private let memory = EventBuffer()
    private var fd: Int32 = -1
    private var path: String?
    private(set) var size: Int64 = 0
    /// Fed with every byte when set (Idempotency-Key fingerprints).
    var fingerprint: Fingerprint?

    /// 16 KiB in memory at most per body (nginx's client_body_buffer_size
    /// is 8-16 KiB): thousands of slow uploads stay in the megabytes.
    init(threshold: Int = 16 * 1024) {
        self.threshold = threshold
    }

    deinit {
        discard()
    }

    /// Takes every byte of `buffer`; `limit` bounds the total.
    func append(_ buffer: EventBuffer, limit: Int64, spoolPath: @autoclosure () -> String) throws(Failure) {
        let n = buffer.count
        guard n > 0 else { return }
        if size + Int64(n) > limit {
            buffer.drain(n)
            throw .tooLarge
        }
        if fingerprint != nil { buffer.forEachSegment { fingerprint!.update($0) } }
        size += Int64(n)
        memory.moveAll(from: buffer)
        if fd < 0 && memory.count > threshold {
            let p = spoolPath()
            let f = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard f >= 0 else { throw .io(errno) }
            fd = f
            path = p
        }
        if fd >= 0 { try writeOut() }
    }

    private func writeOut() throws(Failure) {
        while !memory.isEmpty {
            let w = memory.write(to: fd)
            if w < 0 {
                if errno == EINTR { continue }
                throw .io(errno)
            }
        }
    }

    /// The collected body. The spool is empty after; on failure its file
    /// is removed. Files are not synced here: the SQLite store syncs the
    /// files a commit names before that commit, on its writer thread.
    func finish() throws(Failure) -> StoredBody {
        guard fd >= 0, let path else {
            defer { reset() }
            return .inline(memory.takeBytes())
        }
        do {
            try writeOut()
        } catch {
            discard()
            throw error
        }
        close(fd)
        fd = -1
        let size = self.size
        self.path = nil  // the store owns the file now
        reset()
        return .file(path: path, size: size)
    }

    /// Drops what was collected, file included.
    func discard() {
        if fd >= 0 { close(fd); fd = -1 }
        if let path { unlink(path) }
        reset()
    }

    private func reset() {
        memory.removeAll()
        path = nil
        size = 0
        fingerprint = nil
    }
}

/// Puts a stored body into `buffer`: bytes for inline ones, a file segment
/// (sent with sendfile or mmap, never read into memory) for spooled ones.
/// False if the file is gone.
func addStoredBody(_ body: StoredBody, to buffer: EventBuffer) -> Bool {
    switch body {
    case .inline(let bytes):
        bytes.withUnsafeBytes { buffer.append($0) }
        return true
    case .file(let path, let size):
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        if size == 0 { close(fd); return true }
        // libevent owns and closes the descriptor once added.
        guard buffer.appendFile(fd, length: size) else {
            close(fd)
            return false
        }
        return true
    }
}

/// A stored body on its way to a client: its bytes, or its spool file open
/// (for `HTTPServerConnection.writeBodyFile`, which takes the descriptor).
enum OutgoingBody {
    case bytes(EventBuffer)
    case file(Int32, size: Int64)
}

/// Opens a stored body for sending; nil if its file is gone.
func openStoredBody(_ body: StoredBody) -> OutgoingBody? {
    switch body {
    case .inline(let bytes):
        let buffer = EventBuffer()
        bytes.withUnsafeBytes { buffer.append($0) }
        return .bytes(buffer)
    case .file(let path, let size):
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        return .file(fd, size: size)
    }
}
