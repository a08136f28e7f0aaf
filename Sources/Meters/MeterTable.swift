import Synchronization

/// Counters that one writer adds to and any thread reads: an open-addressed
/// table of (key, value) cells in atomics. The writer is one thread (an
/// event loop, the store's writer) or whoever holds one lock; it adds with
/// a relaxed load and store, never a read-modify-write, so counting costs
/// no lock and no bus-locked instruction, and no cache line is written by
/// two cores (SPEC §7: no lock shared between loops). A scrape sums the
/// tables of every writer.
///
/// A key, once placed, stays: the labels behind keys are bounded (route,
/// upstream, method, status), so the table does not fill; if it ever
/// does, further new keys are counted in `dropped` and lost.
public final class MeterTable: @unchecked Sendable {
    /// Cells: key at 2i, value at 2i + 1. Key 0 is an empty cell.
    private let cells: UnsafeMutablePointer<Atomic<UInt64>>
    private let mask: Int
    private let shift: UInt64
    private let droppedKeys = Atomic<UInt64>(0)
    /// Histogram blocks: counts by bucket, then the sum. A block's offset
    /// (plus one) is the value of its key's cell.
    private let arena: UnsafeMutablePointer<Atomic<UInt64>>
    private let arenaCapacity: Int
    /// Writer only.
    private var arenaUsed = 0
    /// `a` of a histogram block's key (its `b`: the block's width).
    static let blockIndex = 0xF_FFFE

    /// `capacity` cells, rounded up to a power of two.
    public init(capacity: Int = 4096) {
        var n = 64
        while n < capacity { n <<= 1 }
        mask = n - 1
        shift = UInt64(64 - n.trailingZeroBitCount)
        cells = .allocate(capacity: 2 * n)
        for i in 0..<(2 * n) { (cells + i).initialize(to: Atomic(0)) }
        arenaCapacity = n
        arena = .allocate(capacity: n)
        for i in 0..<n { (arena + i).initialize(to: Atomic(0)) }
    }

    deinit {
        cells.deinitialize(count: 2 * (mask + 1))
        cells.deallocate()
        arena.deinitialize(count: arenaCapacity)
        arena.deallocate()
    }

    /// Adds `n` to `key`'s count. Writer only.
    @inline(__always)
    public func add(_ key: MeterKey, _ n: UInt64 = 1) {
        guard let i = cell(key.bits) else { return }
        let v = cells[2 * i + 1].load(ordering: .relaxed)
        cells[2 * i + 1].store(v &+ n, ordering: .relaxed)
    }

    /// The cell of key `k`, placed (with value 0) if new; nil when the
    /// table is full.
    @inline(__always)
    private func cell(_ k: UInt64) -> Int? {
        var i = Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> shift)
        for _ in 0...mask {
            let found = cells[2 * i].load(ordering: .relaxed)
            if found == k { return i }
            if found == 0 {
                // Released: a reader that sees the key sees its zero value,
                // not whatever was there.
                cells[2 * i].store(k, ordering: .releasing)
                return i
            }
            i = (i + 1) & mask
        }
        droppedKeys.store(droppedKeys.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        return nil
    }

    /// One observation of a histogram: its bucket and its sum, in the
    /// histogram's block of the arena (one lookup for both). Writer only.
    @inline(__always)
    public func observe(_ family: MeterFamily, slot: Int, _ buckets: MeterBuckets, nanos: UInt64) {
        let width = buckets.count + 2  // the buckets, +Inf, the sum
        guard let i = cell(MeterKey(family, slot: slot, MeterTable.blockIndex, width).bits) else { return }
        var base = Int(truncatingIfNeeded: cells[2 * i + 1].load(ordering: .relaxed))
        if base == 0 {
            guard arenaUsed + width <= arenaCapacity else {
                droppedKeys.store(droppedKeys.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
                return
            }
            arenaUsed += width
            base = arenaUsed - width + 1
            // Released: a reader that sees the offset sees the block's zeros.
            cells[2 * i + 1].store(UInt64(base), ordering: .releasing)
        }
        let b = base - 1 + buckets.bucket(nanos)
        arena[b].store(arena[b].load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        let sum = base - 2 + width
        arena[sum].store(arena[sum].load(ordering: .relaxed) &+ nanos, ordering: .relaxed)
    }

    /// Every key placed so far with its count; a histogram's block as one
    /// key per bucket (`a`: its index, the last +Inf) and one for its sum
    /// (`a`: `MeterBuckets.sumIndex`). Any thread.
    public func forEach(_ body: (MeterKey, UInt64) -> Void) {
        for i in 0...mask {
            let k = cells[2 * i].load(ordering: .acquiring)
            guard k != 0 else { continue }
            let key = MeterKey(bits: k)
            let v = cells[2 * i + 1].load(ordering: .acquiring)
            guard key.a == MeterTable.blockIndex else {
                body(key, v)
                continue
            }
            guard v != 0, let family = key.family else { continue }
            let base = Int(v) - 1, width = key.b
            for j in 0..<(width - 1) {
                body(MeterKey(family, slot: key.slot, j), arena[base + j].load(ordering: .relaxed))
            }
            body(MeterKey(family, slot: key.slot, MeterBuckets.sumIndex), arena[base + width - 1].load(ordering: .relaxed))
        }
    }

    /// New keys that found the table full.
    public var dropped: UInt64 { droppedKeys.load(ordering: .relaxed) }
}

/// A counter's identity in a `MeterTable`: its family, a label slot (a
/// route or an upstream, `MeterLabels`) and two small label values (a
/// method and a status, a bucket, a result). Never zero.
public struct MeterKey: Hashable, Sendable {
    public let bits: UInt64

    init(bits: UInt64) { self.bits = bits }

    @inline(__always)
    public init(_ family: MeterFamily, slot: Int, _ a: Int = 0, _ b: Int = 0) {
        bits = UInt64(family.rawValue) << 56 | UInt64(truncatingIfNeeded: slot & 0xFFFF) << 40
            | UInt64(truncatingIfNeeded: a & 0xF_FFFF) << 20 | UInt64(truncatingIfNeeded: b & 0xF_FFFF)
    }

    public var family: MeterFamily? { MeterFamily(rawValue: UInt8(truncatingIfNeeded: bits >> 56)) }
    public var slot: Int { Int(truncatingIfNeeded: (bits >> 40) & 0xFFFF) }
    public var a: Int { Int(truncatingIfNeeded: (bits >> 20) & 0xF_FFFF) }
    public var b: Int { Int(truncatingIfNeeded: bits & 0xF_FFFF) }
}

/// What a `MeterKey` counts (SPEC §7's table; histograms count per bucket,
/// and their sum in nanoseconds).
public enum MeterFamily: UInt8, Sendable, CaseIterable {
    /// slot: route; a: method (http_parser's number); b: status.
    case httpRequests = 1
    /// slot: route; a: bucket (or `MeterBuckets.sumIndex`).
    case httpDuration
    /// slot: upstream; a: 0 and b: status, or a: 1 and b: `UpstreamFault`.
    case upstreamRequests
    /// slot: upstream; a: bucket.
    case upstreamDuration
    /// slot: route; a: `RouteModeLabel`.
    case jobsCreated
    /// slot: upstream; a: the terminal status (`JobStatus` order).
    case jobsFinished
    /// slot: upstream; a: bucket.
    case jobDuration
    /// slot: upstream.
    case jobRetries
    /// slot: store kind; a: bucket.
    case storeCommit
    /// slot: route; a: `DeliveryResult`.
    case webhookDeliveries
}

/// The buckets of one histogram, in nanoseconds, and where an observation
/// falls. The last index (`bounds.count`) is the +Inf bucket.
public struct MeterBuckets: @unchecked Sendable {
    /// Upper bounds, ascending. Kept for the life of the process (the
    /// few histograms are statics): a plain pointer, so handing buckets
    /// to `observe` on every request counts no reference.
    private let base: UnsafePointer<UInt64>
    public let count: Int

    public var bounds: UnsafeBufferPointer<UInt64> { UnsafeBufferPointer(start: base, count: count) }
    /// `a` of the key that holds the sum of the observations, in nanoseconds.
    public static let sumIndex = 0xF_FFFF

    public init(seconds: [Double]) {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: seconds.count)
        for (i, s) in seconds.enumerated() { p[i] = UInt64((s * 1e9).rounded()) }
        base = UnsafePointer(p)
        count = seconds.count
    }

    /// The first bucket whose bound is at least `nanos`, counted up from
    /// the smallest: requests and exchanges fall mostly in the first few
    /// buckets, where this takes a step or two against a binary search's
    /// five; a slow one takes more, next to its own seconds.
    @inline(__always)
    public func bucket(_ nanos: UInt64) -> Int {
        var i = 0
        while i < count && nanos > base[i] { i &+= 1 }
        return i
    }

    /// Latency of requests and upstream exchanges: sub-millisecond to minutes.
    public static let latency = MeterBuckets(seconds: [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900,
    ])
    /// A job from its creation to its end: seconds to hours.
    public static let jobDuration = MeterBuckets(seconds: [
        0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400,
    ])
    /// One store commit (a group of writes made durable).
    public static let storeCommit = MeterBuckets(seconds: [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5,
    ])
}
