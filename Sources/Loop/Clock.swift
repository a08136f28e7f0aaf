#if canImport(Glibc)
import Glibc
#endif

/// Monotonic nanoseconds, for deadlines and durations.
@inline(__always)
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// CLOCK_MONOTONIC_COARSE: the time of the last tick (1-4 ms), read
/// without a system call; precise enough for timeouts.
@inline(__always)
func coarseMonotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Wall-clock milliseconds since the epoch, for logs and JSON timestamps.
public func wallClockMillis() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}

extension Duration {
    public var nanoseconds: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
}

/// `2026-11-29T10:00:00.000Z`: the one timestamp format of logs and JSON,
/// `timestampLength` bytes written at `p`.
public func formatTimestamp(millis: Int64, into p: UnsafeMutablePointer<UInt8>) {
    var t = time_t(millis / 1000)
    var parts = tm()
    gmtime_r(&t, &parts)
    var i = 0
    func digits(_ v: Int, _ n: Int) {
        var v = v
        for k in stride(from: n - 1, through: 0, by: -1) {
            p[i + k] = UInt8(0x30 + v % 10)
            v /= 10
        }
        i += n
    }
    func separator(_ c: Unicode.Scalar) {
        p[i] = UInt8(ascii: c)
        i += 1
    }
    digits(Int(parts.tm_year) + 1900, 4)
    separator("-")
    digits(Int(parts.tm_mon) + 1, 2)
    separator("-")
    digits(Int(parts.tm_mday), 2)
    separator("T")
    digits(Int(parts.tm_hour), 2)
    separator(":")
    digits(Int(parts.tm_min), 2)
    separator(":")
    digits(Int(parts.tm_sec), 2)
    separator(".")
    digits(Int(millis % 1000), 3)
    separator("Z")
}

public let timestampLength = 24

/// `formatTimestamp` as a String.
public func iso8601UTC(millis: Int64) -> String {
    String(unsafeUninitializedCapacity: timestampLength) { buffer in
        formatTimestamp(millis: millis, into: buffer.baseAddress!)
        return timestampLength
    }
}
