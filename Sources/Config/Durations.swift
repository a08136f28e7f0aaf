/// The one parser of durations and sizes in the project (SPEC §2).
///
/// Durations: one or more `INTEGER UNIT` parts, units `ms`, `s`, `m`, `h`,
/// e.g. `250ms`, `2s`, `15m`, `24h`, `1h30m`. Sizes: an integer of bytes with an
/// optional unit `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024) or `KB`/`MB`/`GB`/`TB`
/// (powers of 1000), e.g. `512`, `16KiB`, `8MiB`. No signs, fractions or spaces.

private let durationUnitsMS: [(String, Int64)] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]

/// Parses `250ms`, `2s`, `15m`, `24h`, `1h30m`, `0s`; nil if malformed or overflowing.
public func parseDuration(_ s: String) -> Duration? {
    var rest = Substring(s)
    guard !rest.isEmpty else { return nil }
    var totalMS: Int64 = 0
    var lastScale = Int64.max
    while !rest.isEmpty {
        guard let (value, afterDigits) = leadingInteger(rest) else { return nil }
        let unit = afterDigits.prefix { $0.isASCII && $0.isLetter }
        // Units must shrink (`1h30m`, not `30m1h` or `1s1s`).
        guard let scale = durationUnitsMS.first(where: { $0.0 == unit })?.1, scale < lastScale else { return nil }
        lastScale = scale
        let (part, o1) = value.multipliedReportingOverflow(by: scale)
        let (sum, o2) = totalMS.addingReportingOverflow(part)
        if o1 || o2 { return nil }
        totalMS = sum
        rest = afterDigits.dropFirst(unit.count)
    }
    return .milliseconds(totalMS)
}

private let sizeUnits: [(String, Int64)] = [
    ("", 1),
    ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
    ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
]

/// Parses `512`, `16KiB`, `8MiB`, `1GiB`, `10MB`; nil if malformed or overflowing.
public func parseSize(_ s: String) -> Int64? {
    guard let (value, unit) = leadingInteger(Substring(s)),
          let scale = sizeUnits.first(where: { $0.0 == unit })?.1
    else { return nil }
    let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
    return overflow ? nil : bytes
}

/// The shortest form `parseDuration` reads back to the same value, e.g. `1h30m`,
/// `250ms`, `0s`. Sub-millisecond remainders are dropped (we never parse them).
public func formatDuration(_ d: Duration) -> String {
    let (seconds, attoseconds) = d.components
    guard seconds >= 0, attoseconds >= 0 else { return "\(d)" }
    var ms = seconds * 1_000 + attoseconds / 1_000_000_000_000_000
    if ms == 0 { return "0s" }
    var out = ""
    for (unit, scale) in durationUnitsMS.reversed() where ms >= scale {
        out += "\(ms / scale)\(unit)"
        ms %= scale
    }
    return out
}

/// Formats a byte count with the largest binary unit that divides it exactly.
public func formatSize(_ bytes: Int64) -> String {
    for (unit, scale) in sizeUnits.prefix(5).reversed() where scale > 1 && bytes != 0 && bytes % scale == 0 {
        return "\(bytes / scale)\(unit)"
    }
    return "\(bytes)"
}

/// ASCII digits at the start of `s` and what follows them; nil if none or overflow.
private func leadingInteger(_ s: Substring) -> (Int64, Substring)? {
    let digits = s.prefix { $0.isASCII && $0.isNumber }
    guard !digits.isEmpty, let value = Int64(digits) else { return nil }
    return (value, s.dropFirst(digits.count))
}
