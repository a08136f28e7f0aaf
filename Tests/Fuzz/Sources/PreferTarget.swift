import HTTP
import Jobs

/// `Prefer` as a job route reads it (`JobPreference`). Each line of the
/// input is the value of one `Prefer` field of a request; a head the reader
/// refuses is skipped. The answer must be the one written down here again
/// from the rule: the first `wait=N` whose N is 1 to 9 digits (a fraction
/// ignored), capped by `jobs.max_wait`, wins, also beside `respond-async`
/// (RFC 7240's `respond-async, wait=10` is a bounded wait); else
/// `respond-async` anywhere.
enum PreferTarget {
    static let maxWait = Duration.seconds(60)

    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let lines = data.split(separator: 0x0A, omittingEmptySubsequences: false)
        var head = Array("POST /reports HTTP/1.1\r\nHost: fuzz.example\r\n".utf8)
        for line in lines {
            head += Array("Prefer: ".utf8) + line + [0x0D, 0x0A]
        }
        head += [0x0D, 0x0A]
        let reader = MessageReader(kind: .request, capacity: 16 * 1024)
        let input = withBytes(head) { EventBuffer($0) }
        guard (try? reader.readHead(from: input)) == .complete else { return }
        let preference = JobPreference(of: reader, maxWait: maxWait)
        let values = reader.fields.filter { lowercased(reader.name($0)) == Name.prefer }.map { Array(reader.value($0)) }
        let expected = reference(values)
        require(preference == expected, "\(values.map(text)): \(preference), expected \(expected)")
    }

    static func reference(_ values: [[UInt8]]) -> JobPreference {
        var wait: Int?
        var respondAsync = false
        for value in values {
            for element in listElements(value) {
                // Parameters (`; ...`) are not looked at.
                let preference = element.prefix { $0 != UInt8(ascii: ";") }
                let token = Array(preference.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed())
                let lower = lowercased(token)
                if lower == Array("respond-async".utf8) {
                    respondAsync = true
                } else if wait == nil, lower.count > 5, lower.starts(with: Array("wait=".utf8)) {
                    let digits = lower.dropFirst(5).prefix { $0 != UInt8(ascii: ".") }
                    if (1...9).contains(digits.count), digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
                        wait = Int(String(decoding: digits, as: UTF8.self))
                    }
                }
            }
        }
        if let wait { return .wait(min(wait, Int(maxWait.components.seconds))) }
        if respondAsync { return .respondAsync }
        return .absent
    }
}
