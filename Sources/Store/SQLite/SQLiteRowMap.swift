import Synchronization

/// Job id -> rowid, shared by the writer (which changes it after commits)
/// and the readers.
final class RowMap: Sendable {
    private let map = Mutex(JobIDMap<Int64>())

    subscript(id: JobID) -> Int64? { map.withLock { $0[id] } }
    func merge(_ found: [JobID: Int64]) { map.withLock { m in for (id, seq) in found { m[id] = seq } } }
    /// A committed batch's inserts and deletes, under one lock.
    func apply(inserted: [JobID: Int64], deleted: Set<JobID>) {
        guard !inserted.isEmpty || !deleted.isEmpty else { return }
        map.withLock { m in
            for (id, seq) in inserted { m[id] = seq }
            for id in deleted { m[id] = nil }
        }
    }
}
