#if canImport(Glibc)
import Glibc
#endif

/// Whole seconds: `10`; a fraction is rounded down (`1.5` is 1). Nil for
/// anything else, or more than nine digits.
public func parseSeconds(_ bytes: UnsafeBufferPointer<UInt8>) -> Int? {
    var n = 0
    var digits = 0
    for c in bytes {
        if c == UInt8(ascii: ".") { break }
        guard c >= 0x30 && c <= 0x39, digits < 9 else { return nil }
        n = n * 10 + Int(c - 0x30)
        digits += 1
    }
    return digits > 0 ? n : nil
}

/// `Retry-After` (RFC 9110 §10.2.3) as seconds from now: delay-seconds, or
/// an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), 0 if already past.
public func retryAfterSeconds(_ value: UnsafeBufferPointer<UInt8>, nowMillis: Int64) -> Int? {
    if let seconds = parseSeconds(value) { return seconds }
    guard let at = parseIMFFixdate(value) else { return nil }
    return Int(max(0, (at * 1000 - nowMillis + 999) / 1000))
}

/// An IMF-fixdate as Unix seconds, or nil.
public func parseIMFFixdate(_ v: UnsafeBufferPointer<UInt8>) -> Int64? {
    // "Sun, 06 Nov 1994 08:49:37 GMT": fixed positions.
    guard v.count == 29, v[3] == UInt8(ascii: ","), v[4] == 0x20, v[7] == 0x20, v[11] == 0x20, v[16] == 0x20,
          v[19] == UInt8(ascii: ":"), v[22] == UInt8(ascii: ":"), v[25] == 0x20,
          v[26] == UInt8(ascii: "G"), v[27] == UInt8(ascii: "M"), v[28] == UInt8(ascii: "T") else { return nil }
    func number(_ from: Int, _ count: Int) -> Int? {
        var n = 0
        for i in from..<(from + count) {
            guard v[i] >= 0x30 && v[i] <= 0x39 else { return nil }
            n = n * 10 + Int(v[i] - 0x30)
        }
        return n
    }
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
    guard let month = months.firstIndex(where: { $0.utf8.elementsEqual(v[8..<11]) }),
          let day = number(5, 2), let year = number(12, 4), let hour = number(17, 2),
          let minute = number(20, 2), let second = number(23, 2),
          (1...31).contains(day), hour < 24, minute < 60, second < 61 else { return nil }
    var parts = tm()
    parts.tm_year = Int32(year - 1900)
    parts.tm_mon = Int32(month)
    parts.tm_mday = Int32(day)
    parts.tm_hour = Int32(hour)
    parts.tm_min = Int32(minute)
    parts.tm_sec = Int32(second)
    return Int64(timegm(&parts))
}
