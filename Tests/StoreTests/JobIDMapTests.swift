@testable import Store
import Testing

/// The sharded id map behaves as one dictionary: every id finds its value,
/// removal and replacement work, counts and iteration (whole or shard by
/// shard) see every entry once.
@Suite struct JobIDMapTests {
    @Test func actsAsOneDictionary() {
        var map = JobIDMap<Int>()
        var reference: [JobID: Int] = [:]
        #expect(map.isEmpty)
        for n in 0..<5_000 {
            let id = JobID.random()
            map[id] = n
            reference[id] = n
        }
        #expect(map.count == reference.count)
        for (id, n) in reference { #expect(map[id] == n) }
        #expect(map[JobID.random()] == nil)

        let someIDs = Array(reference.keys.prefix(1_000))
        for id in someIDs.prefix(500) {
            #expect(map.removeValue(forKey: id) == reference.removeValue(forKey: id))
        }
        for id in someIDs.suffix(500) {
            map[id] = -1
            reference[id] = -1
        }
        #expect(map.removeValue(forKey: someIDs[0]) == nil)

        var seen: [JobID: Int] = [:]
        map.forEach { id, n in
            #expect(seen[id] == nil)
            seen[id] = n
        }
        #expect(seen == reference)
        var byShard: [JobID: Int] = [:]
        for shard in 0..<JobIDMap<Int>.shardCount {
            map.forEach(inShard: shard) { id, n in
                #expect(id.shard == shard)
                byShard[id] = n
            }
        }
        #expect(byShard == reference)
        #expect(map.count == reference.count)
        #expect(!map.isEmpty)
    }

    @Test func idsSpreadOverEveryShard() {
        var used = Set<Int>()
        for _ in 0..<2_000 { used.insert(JobID.random().shard) }
        #expect(used == Set(0..<JobIDMap<Int>.shardCount))
    }
}
