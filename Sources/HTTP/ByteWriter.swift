import CLibevent
import Loop

#if canImport(Glibc)
import Glibc
#endif

/// A reusable, growable byte buffer for building heads and log lines:
/// many small appends, then one `evbuffer_add`. Owned by one connection
/// (or one loop) and never shared.
public final class ByteWriter {
    public private(set) var base: UnsafeMutablePointer<UInt8>
    public private(set) var count = 0
    /// `appendTimestamp`'s last second, formatted (its first 20 bytes,
    /// `YYYY-MM-DDTHH:MM:SS.`, are reused within the second).
    private var cachedSecond = Int64.min
    private var cachedPrefix = [UInt8](repeating: 0, count: timestampLength)
    private var capacity: Int

    public init(capacity: Int = 4096) {
        self.capacity = capacity
        self.base = .allocate(capacity: capacity)
    }

    deinit { base.deallocate() }

    @inline(__always)
    private func reserve(_ n: Int) {
        if count + n > capacity { grow(count + n) }
    }

    private func grow(_ needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let newBase = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        newBase.update(from: base, count: count)
        base.deallocate()
        base = newBase
        capacity = newCapacity
    }

    public func reset() { count = 0 }

    @inline(__always)
    public func append(_ s: StaticString) {
        let n = s.utf8CodeUnitCount
        reserve(n)
        (base + count).update(from: s.utf8Start, count: n)
        count += n
    }

    @inline(__always)
    public func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard let p = bytes.baseAddress, bytes.count > 0 else { return }
        reserve(bytes.count)
        (base + count).update(from: p, count: bytes.count)
        count += bytes.count
    }

    public func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { append($0) }
    }

    /// A String's bytes. (Its own label: a literal argument then picks the
    /// StaticString overload, a plain copy, not String's default.)
    public func append(string s: String) {
        var s = s
        s.withUTF8 { append($0) }
    }

    /// `count` bytes written by `fill` straight into the buffer.
    @inline(__always)
    public func append(count n: Int, _ fill: (UnsafeMutablePointer<UInt8>) -> Void) {
        reserve(n)
        fill(base + count)
        count += n
    }

    @inline(__always)
    public func append(byte: UInt8) {
        reserve(1)
        base[count] = byte
        count += 1
    }

    /// Decimal digits of a non-negative integer.
    public func append(decimal value: Int64) {
        reserve(20)
        if value < 1000 {
            // A status code, a small length: no digit counting loop. (A
            // negative value writes nothing, as the loop below would.)
            guard value >= 0 else { return }
            let v = UInt8(truncatingIfNeeded: value / 10), p = base + count
            if value >= 100 {
                p[0] = 0x30 + v / 10
                p[1] = 0x30 + v % 10
                p[2] = 0x30 + UInt8(truncatingIfNeeded: value % 10)
                count += 3
            } else if value >= 10 {
                p[0] = 0x30 + v
                p[1] = 0x30 + UInt8(truncatingIfNeeded: value % 10)
                count += 2
            } else {
                p[0] = 0x30 + UInt8(truncatingIfNeeded: value)
                count += 1
            }
            return
        }
        var v = value
        var digits = 0
        var t = v
        while t > 0 { t /= 10; digits += 1 }
        var i = count + digits - 1
        while v > 0 {
            base[i] = UInt8(0x30 + v % 10)
            v /= 10
            i -= 1
        }
        count += digits
    }

    /// `value` as a JSON string body (no quotes): escapes `"`, `\` and controls.
    public func appendJSONEscaped(_ bytes: UnsafeBufferPointer<UInt8>) {
        // Runs that need no escaping (nearly all of them) are copied whole.
        var start = 0
        for (i, c) in bytes.enumerated() where c < 0x20 || c == UInt8(ascii: "\"") || c == UInt8(ascii: "\\") {
            append(UnsafeBufferPointer(rebasing: bytes[start..<i]))
            appendEscaped(c)
            start = i + 1
        }
        append(UnsafeBufferPointer(rebasing: bytes[start...]))
    }

    private func appendEscaped(_ c: UInt8) {
        switch c {
        case UInt8(ascii: "\""): append("\\\"")
        case UInt8(ascii: "\\"): append("\\\\")
        default:
            append("\\u00")
            append(byte: hexDigit(c >> 4))
            append(byte: hexDigit(c & 0xF))
        }
    }

    public func appendJSONEscaped(_ s: StaticString) {
        appendJSONEscaped(UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
    }

    public func appendJSONEscaped(_ s: String) {
        var s = s
        s.withUTF8 { appendJSONEscaped($0) }
    }

    /// A JSON string value, quoted and escaped, or `null`.
    public func appendJSONString(_ s: String?) {
        guard let s else {
            append("null")
            return
        }
        append(byte: UInt8(ascii: "\""))
        appendJSONEscaped(s)
        append(byte: UInt8(ascii: "\""))
    }

    /// Appends "Name: value\r\n".
    @inline(__always)
    public func header(_ name: StaticString, _ value: StaticString) {
        field(name.utf8Start, name.utf8CodeUnitCount, value.utf8Start, value.utf8CodeUnitCount)
    }

    @inline(__always)
    public func header(_ name: StaticString, _ value: UnsafeBufferPointer<UInt8>) {
        field(name.utf8Start, name.utf8CodeUnitCount, value.baseAddress, value.count)
    }

    public func header(_ name: StaticString, _ value: String) {
        append(name); append(": "); append(string: value); append("\r\n")
    }

    public func header(_ name: StaticString, decimal value: Int64) {
        append(name); append(": "); append(decimal: value); append("\r\n")
    }

    @inline(__always)
    public func header(_ name: UnsafeBufferPointer<UInt8>, _ value: UnsafeBufferPointer<UInt8>) {
        field(name.baseAddress, name.count, value.baseAddress, value.count)
    }

    /// "name: value\r\n" with one capacity check and one count update: the
    /// fields are most of a head's appends, and each separate append reloads
    /// the buffer after its copy.
    @inline(__always)
    private func field(_ name: UnsafePointer<UInt8>?, _ n: Int, _ value: UnsafePointer<UInt8>?, _ v: Int) {
        let total = n + v + 4
        reserve(total)
        let p = base + count
        if let name, n > 0 { p.update(from: name, count: n) }
        p[n] = UInt8(ascii: ":")
        p[n + 1] = UInt8(ascii: " ")
        if let value, v > 0 { (p + n + 2).update(from: value, count: v) }
        p[n + 2 + v] = 0x0D
        p[n + 3 + v] = 0x0A
        count += total
    }

    public var bytes: UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: base, count: count)
    }

    /// Copies the contents to the end of `buffer` and resets.
    public func flush(to buffer: EventBuffer) {
        flush(to: buffer.raw)
    }

    func flush(to buffer: OpaquePointer) {
        evbuffer_add(buffer, base, count)
        count = 0
    }

    /// The bytes added to `buffer`, and kept here.
    func copy(to buffer: OpaquePointer) {
        evbuffer_add(buffer, base, count)
    }
}

@inline(__always)
func hexDigit(_ v: UInt8) -> UInt8 {
    v < 10 ? 0x30 + v : 0x61 + v - 10
}

extension ByteWriter {
    /// `formatTimestamp`'s bytes (the timestamp of the job JSON and the
    /// logs). The date and time of the last second written are kept, so most
    /// calls only add the milliseconds.
    public func appendTimestamp(millis: Int64) {
        let second = millis / 1000
        if second != cachedSecond {
            cachedSecond = second
            cachedPrefix.withUnsafeMutableBufferPointer { formatTimestamp(millis: second * 1000, into: $0.baseAddress!) }
        }
        cachedPrefix.withUnsafeBufferPointer { append(UnsafeBufferPointer(rebasing: $0[0..<20])) }
        let ms = Int(millis % 1000)
        append(byte: UInt8(0x30 + ms / 100))
        append(byte: UInt8(0x30 + (ms / 10) % 10))
        append(byte: UInt8(0x30 + ms % 10))
        append(byte: UInt8(ascii: "Z"))
    }
}
