/// A reply as Redis sends it (RESP2).
public enum RedisValue: Sendable, Equatable {
    /// `+OK`.
    case status(String)
    /// `-ERR ...`: the command ran and was refused; the connection is fine.
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    /// A nil bulk string or array.
    case null
    case array([RedisValue])

    public var integer: Int64? {
        if case .integer(let n) = self { return n }
        return nil
    }

    public var bytes: [UInt8]? {
        if case .bulk(let b) = self { return b }
        return nil
    }

    public var string: String? {
        switch self {
        case .bulk(let b): return String(decoding: b, as: UTF8.self)
        case .status(let s): return s
        default: return nil
        }
    }

    public var array: [RedisValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var errorMessage: String? {
        if case .error(let e) = self { return e }
        return nil
    }
}

/// A command could not get an answer: not connected, the connection was
/// lost, or Redis did not answer in time. Whether it ran is unknown.
public struct RedisUnavailable: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { "redis unavailable: \(reason)" }
}

/// One command, encoded as RESP as its arguments are appended: what goes
/// to hiredis is the finished bytes, so nothing is formatted twice.
public struct RedisCommand: Sendable {
    /// The arguments, each as `$LEN\r\nBYTES\r\n`.
    private var arguments: [UInt8] = []
    private var count = 0

    public init(_ name: StaticString) {
        arguments.reserveCapacity(64)
        append(UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount))
    }

    public init(_ words: [String]) {
        for w in words { append(w) }
    }

    public mutating func append(_ s: String) {
        var s = s
        s.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    public mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    public mutating func append(_ n: some BinaryInteger) {
        append(String(n))
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        count += 1
        arguments.append(UInt8(ascii: "$"))
        appendDecimal(bytes.count)
        arguments.append(contentsOf: bytes)
        arguments.append(0x0D)
        arguments.append(0x0A)
    }

    private mutating func appendDecimal(_ n: Int) {
        arguments.append(contentsOf: String(n).utf8)
        arguments.append(0x0D)
        arguments.append(0x0A)
    }

    /// The command's name, for errors and logs (never its arguments: they
    /// hold job data).
    public var name: String {
        guard let start = arguments.firstIndex(of: 0x0A) else { return "" }
        let rest = arguments[(start + 1)...]
        return String(decoding: rest.prefix { $0 != 0x0D }, as: UTF8.self)
    }

    /// `*COUNT\r\n` and the arguments, then a NUL that is not counted in
    /// the length `body` gets. hiredis needs it: `redisAsyncFormattedCommand`
    /// finds a command's arguments with `strchr`, and for SUBSCRIBE it walks
    /// past the last one looking for another `$`. Without a terminator that
    /// read runs off the buffer (seen as `nextArgument: Assertion 'p'
    /// failed` when a replica resubscribed after a Redis restart).
    func withEncoded<R>(_ body: (UnsafePointer<CChar>, Int) -> R) -> R {
        var out: [UInt8] = [UInt8(ascii: "*")]
        out.reserveCapacity(arguments.count + 9)
        out.append(contentsOf: String(count).utf8)
        out.append(0x0D)
        out.append(0x0A)
        out.append(contentsOf: arguments)
        let length = out.count
        out.append(0)
        return out.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { body($0.baseAddress!, length) }
        }
    }
}
