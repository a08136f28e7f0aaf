/// Byte comparisons of the data path: header names, tokens, hosts, route
/// prefixes. The one rule for case: ASCII letters fold, nothing else does
/// (`| 0x20` alone would also equate '@' with '`' and '[' with '{').

/// `c` with an ASCII upper-case letter folded to lower case.
@inline(__always)
public func asciiLower(_ c: UInt8) -> UInt8 {
    c &- 0x41 < 26 ? c | 0x20 : c
}

/// `a` and `b` are equal, ASCII case-insensitively.
public func asciiEqualsIgnoringCase(_ a: UnsafeBufferPointer<UInt8>, _ b: UnsafeBufferPointer<UInt8>) -> Bool {
    guard a.count == b.count else { return false }
    for i in 0..<a.count where asciiLower(a[i]) != asciiLower(b[i]) { return false }
    return true
}

/// True if a field name (or token) equals `lower`, a lower-case literal, any case.
public func headerName(_ name: UnsafeBufferPointer<UInt8>, equals lower: StaticString) -> Bool {
    guard let p = name.baseAddress else { return lower.utf8CodeUnitCount == 0 }
    return equalsLower(p, name.count, lower)
}

/// True if a field name equals `lower` (lower-case bytes, e.g. a configured
/// header name), any case.
public func headerName(_ name: UnsafeBufferPointer<UInt8>, equals lower: [UInt8]) -> Bool {
    guard name.count == lower.count else { return false }
    for i in 0..<name.count where asciiLower(name[i]) != lower[i] { return false }
    return true
}

/// Compares `n` bytes at `p`, ASCII case-insensitively, with a lower-case
/// literal of the same length. The fold is chosen by the literal's byte
/// (a letter there: fold the input byte; anything else: compare exactly),
/// the same rule as `asciiLower`, but constant-folded where the literal is
/// known at compile time (header names on every request).
@inline(__always)
func equalsLower(_ p: UnsafePointer<UInt8>, _ n: Int, _ lower: StaticString) -> Bool {
    guard lower.utf8CodeUnitCount == n else { return false }
    let q = lower.utf8Start
    for i in 0..<n {
        let b = q[i]
        let a = (b >= 0x61 && b <= 0x7A) ? p[i] | 0x20 : p[i]
        if a != b { return false }
    }
    return true
}

/// `bytes` starts with `prefix`, exactly.
@inlinable
public func hasPrefix(_ bytes: UnsafeBufferPointer<UInt8>, _ prefix: [UInt8]) -> Bool {
    guard bytes.count >= prefix.count else { return false }
    for i in 0..<prefix.count where bytes[i] != prefix[i] { return false }
    return true
}

/// `a` equals `b`, exactly.
@inlinable
public func bytesEqual(_ a: UnsafeBufferPointer<UInt8>, _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    for i in 0..<b.count where a[i] != b[i] { return false }
    return true
}
