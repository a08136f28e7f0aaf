import Loop
import CSQLite
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Runs `PASSIVE` checkpoints on its own thread and connection when the
/// writer's commits have grown the WAL past `threshold` frames (reported by
/// SQLite's WAL hook, which replaces the automatic checkpoints the writer
/// would otherwise run inside COMMIT).
final class Checkpointer: @unchecked Sendable {
    static let threshold: Int32 = 1000

    private let connection: Connection
    private let wakeup = Wakeup()
    /// A checkpoint was asked for and has not started yet.
    private let requested = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<StartedThread?>(nil)

    init(path: String) throws(StoreError) {
        connection = try Connection(path: path, flags: SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX)
        try connection.execute("PRAGMA busy_timeout=\(SQLiteStore.busyTimeoutMillis)")
        let t = try startThread("checkpoint", short: "ckpt") { [self] in run() }
        thread.withLock { $0 = t }
    }

    /// Installs the WAL hook on the writer's connection, which then owns
    /// this checkpointer: closing the connection stops it.
    func watch(_ writer: Connection) {
        writer.setWALHook(self) { ctx, _, _, frames in
            if frames >= Checkpointer.threshold {
                Unmanaged<Checkpointer>.fromOpaque(ctx!).takeUnretainedValue().request()
            }
            return SQLITE_OK
        }
    }

    private func request() {
        if !requested.exchange(true, ordering: .acquiringAndReleasing) { wakeup.signal() }
    }

    private func run() {
        while true {
            wakeup.wait()
            if stopping.load(ordering: .acquiring) { break }
            requested.store(false, ordering: .releasing)
            try? connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        }
        connection.close()
    }

    /// Ends the thread (after a checkpoint under way). Idempotent.
    func stop() {
        guard let t = thread.withLock({ t -> StartedThread? in
            defer { t = nil }
            return t
        }) else { return }
        stopping.store(true, ordering: .releasing)
        wakeup.signal()
        t.join()
    }
}
