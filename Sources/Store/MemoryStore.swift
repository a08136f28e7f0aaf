import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `store: "memory:"`: jobs live as long as the process. Large bodies are
/// still spooled to files (memory stays bounded); this store deletes them.
public final class MemoryStore: LocalJobStore {
    private struct Entry {
        var record: JobRecord
        var request: JobRequest
        var response: JobResponse?
    }

    private let entries = Mutex(JobIDMap<Entry>())

    public init() {}

    public func loadAll() throws(StoreError) -> [JobRecord] {
        entries.withLock { e in
            var records: [JobRecord] = []
            e.forEach { _, entry in records.append(entry.record) }
            return records
        }
    }

    public func insert(_ record: JobRecord, request: JobRequest, done: @escaping @Sendable (StoreError?) -> Void) {
        entries.withLock { $0[record.id] = Entry(record: record, request: request) }
        done(nil)
    }

    public func update(_ record: JobRecord, response: JobResponse?, done: @escaping @Sendable (StoreError?) -> Void) {
        let found = entries.withLock { e -> Bool in
            guard var entry = e[record.id] else { return false }
            entry.record = record
            if let response { entry.response = response }
            e[record.id] = entry
            return true
        }
        done(found ? nil : StoreError("no such job"))
    }

    public func delete(_ ids: [JobID], done: @escaping @Sendable (StoreError?) -> Void) {
        let removed = entries.withLock { e in ids.compactMap { e.removeValue(forKey: $0) } }
        for entry in removed {
            removeSpoolFile(entry.request.body.filePath)
            removeSpoolFile(entry.response?.body.filePath)
        }
        done(nil)
    }

    public func request(of id: JobID) throws(StoreError) -> JobRequest? {
        entries.withLock { $0[id]?.request }
    }

    public func response(of id: JobID) throws(StoreError) -> JobResponse? {
        entries.withLock { $0[id]?.response }
    }

    public func isHealthy() -> Bool { true }

    public func close() {}
}

/// Deletes a spool file, if there is one.
public func removeSpoolFile(_ path: String?) {
    guard let path else { return }
    _ = unlink(path)
}
