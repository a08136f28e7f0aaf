public import HTTP
public import Logging
public import Loop
public import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Events (not access lines) as one JSON object per line on stderr, at or
/// above the configured level. Formatting happens only for enabled levels:
/// swift-log checks `logLevel` before building the message.
public struct JSONLineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String
    private static let lock = Mutex<Void>(())

    public init(label: String, level: Logger.Level) {
        self.label = label
        self.logLevel = level
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let w = ByteWriter(capacity: 256)
        w.append("{\"ts\":\"")
        w.appendTimestamp(millis: wallClockMillis())
        w.append("\",\"level\":")
        w.appendJSONString(event.level.rawValue)
        w.append(",\"logger\":")
        w.appendJSONString(label)
        w.append(",\"msg\":")
        w.appendJSONString(event.message.description)
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        for (k, v) in all.sorted(by: { $0.key < $1.key }) {
            w.append(byte: UInt8(ascii: ","))
            w.appendJSONString(k)
            w.append(byte: UInt8(ascii: ":"))
            w.appendJSONString(v.description)
        }
        w.append("}\n")
        var bytes = Array(w.bytes)
        JSONLineLogHandler.lock.withLock { _ in
            // write(2) straight to fd 2: no stdio buffer to share between threads.
            var offset = 0
            while offset < bytes.count {
                let n = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
                if n <= 0 { break }
                offset += n
            }
        }
        bytes.removeAll()
    }
}
