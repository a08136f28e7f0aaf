public import Config
public import HTTP
public import Store
public import Logging
public import Loop
public import Proxy
public import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What every loop shares about jobs: the table (and through it the store),
/// the spool directory, and the counts drain and readiness look at.
public final class JobEngine: Sendable {
    public let table: JobTable
    public let dir: String
    /// Background exchanges under way (SIGTERM waits for them).
    private let runningExchanges = Atomic<Int>(0)
    private let stopping = Atomic<Bool>(false)

    /// The Redis store, when jobs are shared by replicas (SPEC §5b): the
    /// truth is there, and the table only observes durations for estimates.
    public let shared: RedisJobStore?

    /// With Redis: the lock on this process's spool directory (`dir`),
    /// held while it lives; -1 without.
    private let spoolLock: Int32

    public init(store: any JobStore, dir: String) throws(StoreError) {
        self.table = JobTable(store: store)
        self.shared = nil
        self.dir = dir
        spoolLock = -1
        try makeDirectories(dir)
    }

    /// Jobs kept in Redis; the spool holds only bodies in transit. Replicas
    /// on one host may share `jobs.dir`: each spools in a directory of its
    /// own inside it (`replica-NAME`), locked while it lives, so a starting
    /// replica removes only what dead ones left.
    public init(shared: RedisJobStore, dir: String) throws(StoreError) {
        self.table = JobTable(store: MemoryStore())
        self.shared = shared
        self.dir = dir + "/replica-" + shared.replica
        try makeDirectories(self.dir)
        let fd = open(self.dir + "/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0, flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = String(cString: strerror(errno))
            if fd >= 0 { close(fd) }
            throw StoreError("cannot lock \(self.dir)/.lock: \(reason)")
        }
        spoolLock = fd
    }

    deinit {
        if spoolLock >= 0 { close(spoolLock) }
    }

    /// A clean stop with Redis: this process's spool directory goes (it is
    /// empty once nothing is in transit; if not, the next start removes it).
    public func removeOwnSpool() {
        guard shared != nil else { return }
        unlink(dir + "/.lock")
        rmdir(dir)
    }

    /// The store answers (`/readyz`; with Redis, every loop's connection is up).
    public var isHealthy: Bool { shared?.isHealthy ?? store.isHealthy() }

    public var store: any JobStore { table.store }

    /// Background exchanges still running.
    public var running: Int { runningExchanges.load(ordering: .relaxed) }

    /// After SIGTERM no queued job is started; they wait for the next start.
    public var isStopping: Bool { stopping.load(ordering: .relaxed) }
    public func stopDispatching() { stopping.store(true, ordering: .relaxed) }

    func exchangeStarted() { runningExchanges.wrappingAdd(1, ordering: .relaxed) }
    func exchangeEnded() { runningExchanges.wrappingSubtract(1, ordering: .relaxed) }

    /// Jobs between their slot and their first byte upstream (the running
    /// mark is being committed): a drain waits for them too, or a job
    /// durably marked running would never be sent.
    private let startingJobs = Atomic<Int>(0)
    var starting: Int { startingJobs.load(ordering: .relaxed) }
    func startBegan() { startingJobs.wrappingAdd(1, ordering: .relaxed) }
    func startEnded() { startingJobs.wrappingSubtract(1, ordering: .relaxed) }

    /// Background work a drain waits for.
    public var busy: Bool { running > 0 || starting > 0 }

    func spoolPath(_ id: JobID, _ suffix: StaticString) -> String {
        dir + "/" + id.text + "." + suffix.description
    }

    /// Reads the store back after a start (SPEC §5): queued jobs are to be
    /// dispatched; a running one is queued again if it is safe to resend,
    /// else it fails `interrupted`. Returns the jobs to dispatch.
    public func recover(now: Int64) throws(StoreError) -> [JobRecord] {
        guard shared == nil else {
            // Redis holds every job; a dead run's claims lapse there and are
            // taken over by the restart rule. Spool files are only in transit.
            removeDeadReplicasSpools()
            return []
        }
        let records = try store.loadAll()
        table.adopt(records)
        removeOrphanSpoolFiles(keeping: Set(records.map(\.id)))
        var dispatch: [JobRecord] = []
        for r in records.sorted(by: { $0.createdAt < $1.createdAt }) {
            switch r.status {
            case .queued:
                dispatch.append(r)
            case .running:
                let moved = table.apply(.recovered(resend: r.resendable), to: r.id) { rec in
                    if !r.resendable { rec.completedAt = now }
                }
                if let moved, moved.status == .queued { dispatch.append(moved) }
            default:
                break
            }
        }
        return dispatch
    }

    /// Spool files of jobs that never were (the process died between
    /// spooling a request and committing its job) or are gone.
    private func removeOrphanSpoolFiles(keeping ids: Set<JobID>) {
        for name in directoryEntries(dir) {
            guard name.hasSuffix(".req") || name.hasSuffix(".res"),
                  let id = JobID(name.dropLast(4)), !ids.contains(id) else { continue }
            unlink(dir + "/" + name)
        }
    }

    /// The spool directories of replicas that are gone: their lock is free.
    private func removeDeadReplicasSpools() {
        let parent = String(dir[..<dir.lastIndex(of: "/")!])
        for name in directoryEntries(parent) where name.hasPrefix("replica-") {
            let path = parent + "/" + name
            guard path != dir else { continue }
            let fd = open(path + "/.lock", O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            guard flock(fd, LOCK_EX | LOCK_NB) == 0 else { continue }  // alive
            for file in directoryEntries(path) { unlink(path + "/" + file) }
            rmdir(path)
        }
    }

    /// Deletes jobs whose results outlived `result_ttl`.
    public func expire(now: Int64, ttl: Duration) {
        let ids = table.expired(now: now, ttl: ttl)
        if !ids.isEmpty { table.remove(ids) { _ in } }
    }
}
