/// A dictionary keyed by job id, split into `shardCount` dictionaries by the
/// id's first bits. Ids come from the CSPRNG, so the shards fill evenly, and
/// growing the map rehashes one shard at a time: the lock around it is held
/// for 1/64 of a full rehash, not for tens of milliseconds of every job
/// with every request waiting (Redis rehashes incrementally for the same
/// reason).
struct JobIDMap<Value> {
    static var shardCount: Int { 1 << JobID.shardBits }
    private var shards: [[JobID: Value]]

    init() {
        shards = Array(repeating: [:], count: Self.shardCount)
    }

    subscript(id: JobID) -> Value? {
        get { shards[id.shard][id] }
        set { shards[id.shard][id] = newValue }
    }

    @discardableResult
    mutating func removeValue(forKey id: JobID) -> Value? {
        shards[id.shard].removeValue(forKey: id)
    }

    var count: Int { shards.reduce(0) { $0 + $1.count } }

    var isEmpty: Bool { shards.allSatisfy(\.isEmpty) }

    /// Every entry, shard by shard (in no particular order).
    func forEach(_ body: (JobID, Value) throws -> Void) rethrows {
        for shard in shards {
            for (id, value) in shard { try body(id, value) }
        }
    }

    /// The entries of one shard (`0..<shardCount`): a long scan can take
    /// its lock once per shard instead of once for the whole map.
    func forEach(inShard shard: Int, _ body: (JobID, Value) throws -> Void) rethrows {
        for (id, value) in shards[shard] { try body(id, value) }
    }
}
