import Logging
import Loop
import Synchronization

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
        var line = "{\"ts\":\"\(isoNow())\",\"level\":\"\(event.level)\",\"logger\":\"\(label)\",\"msg\":\(jsonString(event.message.description))"
        var all = metadata
        if let extra = event.metadata { all.merge(extra) { $1 } }
        for (k, v) in all.sorted(by: { $0.key < $1.key }) {
            line += ",\(jsonString(k)):\(jsonString(v.description))"
        }
        line += "}\n"
        var bytes = Array(line.utf8)
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

func jsonString(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if u.value < 0x20 {
                out += "\\u00" + String(u.value, radix: 16).leftPad(2)
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}

extension String {
    func leftPad(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}

func isoNow() -> String { iso8601UTC(millis: wallClockMillis()) }
