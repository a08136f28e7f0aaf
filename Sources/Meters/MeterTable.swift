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

    /// `capacity` cells, rounded up to a power of two.
    public init(capacity: Int = 4096) {
        var n = 64
        while n < capacity { n <<= 1 }
        mask = n - 1
        shift = UInt64(64 - n.trailingZeroBitCount)
        cells = .allocate(capacity: 2 * n)
        for i in 0..<(2 * n) { (cells + i).initialize(to: Atomic(0)) }
    }

    deinit {
        cells.deinitialize(count: 2 * (mask + 1))
        cells.deallocate()
    }

    /// Adds `n` to `key`'s count. Writer only.
    @inline(__always)
    public func add(_ key: MeterKey, _ n: UInt64 = 1) {
        let k = key.bits
        var i = Int(truncatingIfNeeded: (k &* 0x9E37_79B9_7F4A_7C15) >> shift)
        for _ in 0...mask {
            let found = cells[2 * i].load(ordering: .relaxed)
            if found == k {
                let v = cells[2 * i + 1].load(ordering: .relaxed)
                cells[2 * i + 1].store(v &+ n, ordering: .relaxed)
                return
            }
            if found == 0 {
                // The value first, then the key with release: a reader that
                // sees the key sees its first count.
                cells[2 * i + 1].store(n, ordering: .relaxed)
                cells[2 * i].store(k, ordering: .releasing)
                return
            }
            i = (i + 1) & mask
        }
        droppedKeys.store(droppedKeys.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
    }

    /// Every key placed so far with its count. Any thread.
    public func forEach(_ body: (MeterKey, UInt64) -> Void) {
        for i in 0...mask {
            let k = cells[2 * i].load(ordering: .acquiring)
            if k != 0 { body(MeterKey(bits: k), cells[2 * i + 1].load(ordering: .relaxed)) }
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
public struct MeterBuckets: Sendable {
    public let bounds: [UInt64]
    /// `a` of the key that holds the sum of the observations, in nanoseconds.
    public static let sumIndex = 0xF_FFFF

    public init(seconds: [Double]) {
        bounds = seconds.map { UInt64(($0 * 1e9).rounded()) }
    }

    @inline(__always)
    public func bucket(_ nanos: UInt64) -> Int {
        var i = 0
        while i < bounds.count && nanos > bounds[i] { i += 1 }
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

extension MeterTable {
    /// One observation of `histogram`: its bucket and its sum.
    @inline(__always)
    public func observe(_ family: MeterFamily, slot: Int, _ buckets: MeterBuckets, nanos: UInt64) {
        add(MeterKey(family, slot: slot, buckets.bucket(nanos)))
        add(MeterKey(family, slot: slot, MeterBuckets.sumIndex), nanos)
    }
}
