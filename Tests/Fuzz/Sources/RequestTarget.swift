import HTTP

/// The request head reader, fed as `HTTPServerConnection.process` feeds
/// it: empty lines skipped before a request, the head, its body
/// (fixed-length or chunked), then the next pipelined request while the
/// connection is kept alive; a refusal ends the connection.
///
/// Every input runs four times, with the default `max_header_bytes` and a
/// tiny one, each arriving whole and in pieces: the pieces must not change
/// what is read, and every accepted head must obey the strict rules.
enum RequestTarget {
    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let pieces = arrival(of: data)
        for capacity in [16 * 1024, 200] {
            let whole = ServerSide(capacity: capacity)
            whole.arrive(data, [Piece(range: 0..<data.count, ownChain: false)])
            let split = ServerSide(capacity: capacity)
            split.arrive(data, pieces)
            require(whole.events == split.events,
                    "read differently in pieces (capacity \(capacity)):\n\(whole.events)\n\(split.events)")
        }
    }
}

struct RequestHead: Equatable {
    var method: [UInt8]
    var target: [UInt8]
    var path: [UInt8]
    var versionMinor: Int
    var fields: [FieldCopy]
    var framing: BodyFraming
    var declaredContentLength: Int64?
    var keepAlive: Bool
    var expectContinue: Bool
    var connectionNominates: Bool
    var callbackURLs: UInt8
    var host: [UInt8]?
    var idempotent: Bool
}

enum ServerEvent: Equatable {
    case head(RequestHead)
    /// The whole decoded body of the message.
    case body([UInt8])
    /// A refusal; what the access log reads of the head goes with it.
    case refused(String, method: [UInt8], target: [UInt8], path: [UInt8])
    /// The input ended here: the phase and the body read so far.
    case waiting(String, [UInt8])
}

/// `HTTPServerConnection`'s read loop without the socket, the timers and
/// the handler.
final class ServerSide {
    enum Phase: String { case idle, head, body, closed }

    let reader: MessageReader
    /// Beyond what the reader was given, and beyond the head once read.
    private var poison: HeadPoison
    let input = EventBuffer()
    let decoded = EventBuffer()
    private let staging = EventBuffer()
    private(set) var events: [ServerEvent] = []
    private var phase = Phase.idle
    private var body: [UInt8] = []
    /// `limits.max_request_body`'s default.
    static let maxRequestBody: Int64 = 8 * 1024 * 1024

    init(capacity: Int) {
        reader = MessageReader(kind: .request, capacity: capacity)
        poison = HeadPoison(reader)
    }

    deinit { poison.clear() }

    func arrive(_ data: UnsafeBufferPointer<UInt8>, _ pieces: [Piece]) {
        for piece in pieces {
            input.append(data, piece, staging: staging)
            process()
        }
        events.append(.waiting(phase.rawValue, body))
    }

    private func process() {
        while true {
            switch phase {
            case .closed:
                input.removeAll()
                return
            case .idle, .head:
                if phase == .idle {
                    // RFC 9112 §2.2: empty lines before a request line are ignored.
                    while let c = input.first, c == 0x0D || c == 0x0A { input.drain(1) }
                    if input.isEmpty { return }
                    phase = .head
                }
                let given = min(input.count, reader.capacity)
                poison.set(from: given)
                let result: MessageReader.HeadResult
                do {
                    result = try reader.readHead(from: input)
                } catch {
                    refuse(error)
                    return
                }
                guard result == .complete else { return }
                poison.set(from: reader.headLength)
                let head = checkedHead()
                events.append(.head(head))
                if case .length(let n) = reader.framing, n > ServerSide.maxRequestBody {
                    refuse(.bodyTooLarge)
                    return
                }
                body = []
                phase = .body
            case .body:
                let done: Bool
                do {
                    done = try reader.readBody(from: input, into: decoded)
                    body += decoded.takeBytes()
                } catch {
                    body += decoded.takeBytes()
                    events.append(.body(body))
                    refuse(error)
                    return
                }
                require(reader.bodyBytesRead == Int64(body.count), "bodyBytesRead \(reader.bodyBytesRead), read \(body.count)")
                if case .length(let n) = reader.framing { require(Int64(body.count) <= n, "more body than Content-Length") }
                guard done else { return }
                switch reader.framing {
                case .length(let n): require(Int64(body.count) == n, "body of \(body.count), Content-Length \(n)")
                case .none: require(body.isEmpty, "a body without framing")
                case .chunked: break
                case .untilClose: require(false, "a close-delimited request")
                }
                events.append(.body(body))
                body = []
                if !reader.keepAlive {
                    phase = .closed
                } else {
                    reader.reset()
                    phase = .idle
                }
            }
        }
    }

    /// As `fail` answers and logs it: the log line reads the method and
    /// the target of whatever was parsed.
    private func refuse(_ error: HTTPError) {
        let method = Array(reader.methodName), target = Array(reader.target), path = Array(reader.path)
        events.append(.refused("\(error.status) \(error.code) \(error.message)", method: method, target: target, path: path))
        phase = .closed
        input.removeAll()
    }

    /// The accepted head, checked against the rules the reader promises
    /// (RFC 9112 as DESIGN.md tightens it), each written out here again.
    private func checkedHead() -> RequestHead {
        let r = reader
        require(r.headLength > 0 && r.headLength <= r.capacity, "head length \(r.headLength)")
        checkRawHead(r)
        let fields = checkedFields(of: r)
        require(r.versionMinor == 0 || r.versionMinor == 1, "version 1.\(r.versionMinor)")
        let method = Array(r.methodName)
        require(!method.elementsEqual("CONNECT".utf8) && !method.elementsEqual("TRACE".utf8), "\(text(method)) accepted")

        // Host: exactly one, a valid authority.
        let hosts = fields.filter { $0.lower == Name.host }
        require(hosts.count == 1, "\(hosts.count) Host fields accepted")
        let host = hosts[0].value
        require(r.hostValue.map(Array.init) == host, "hostValue is not the Host field")
        require(isAuthority(host), "Host \(text(host)) accepted")

        // The target and the path forwarded.
        let target = Array(r.target), path = Array(r.path)
        require(!target.isEmpty && target.allSatisfy { $0 > 0x20 && $0 < 0x7F && $0 != UInt8(ascii: "#") },
                "target \(text(target)) accepted")
        require(target.count >= path.count && Array(target.suffix(path.count)) == path, "path is not the target's end")
        if target.first == UInt8(ascii: "/") {
            require(path == target, "origin-form target reduced")
        } else if target == [UInt8(ascii: "*")] {
            require(method.elementsEqual("OPTIONS".utf8), "asterisk-form for \(text(method))")
        } else {
            let lower = lowercased(target)
            let scheme = lower.starts(with: "http://".utf8) ? 7 : lower.starts(with: "https://".utf8) ? 8 : 0
            require(scheme > 0, "target \(text(target)) accepted")
            let authority = target[scheme...].prefix { $0 != UInt8(ascii: "/") && $0 != UInt8(ascii: "?") }
            require(lowercased(authority) == lowercased(host), "absolute-form for \(text(authority)), Host \(text(host))")
            require(path == Array(target[(scheme + authority.count)...]), "absolute-form path")
        }

        // Framing, Connection, Expect, X-Callback-Url.
        let (length, chunked) = checkFraming(fields, versionMinor: r.versionMinor)
        let expectedFraming: BodyFraming = chunked ? .chunked : (length ?? 0) > 0 ? .length(length!) : .none
        require(r.framing == expectedFraming, "framing \(r.framing), expected \(expectedFraming)")
        require(r.declaredContentLength == length, "declared length \(String(describing: r.declaredContentLength))")
        var close = false, keepAlive = false, nominates = false
        for f in fields where f.lower == Name.connection {
            for token in listElements(f.value) {
                switch lowercased(token) {
                case Name.close: close = true
                case Name.keepAlive: keepAlive = true
                default: nominates = true
                }
            }
        }
        let persistent = r.versionMinor == 1 ? !close : keepAlive && !close
        require(r.keepAlive == persistent, "keepAlive \(r.keepAlive)")
        require(r.connectionNominates == nominates, "connectionNominates \(r.connectionNominates)")
        let expects = fields.filter { $0.lower == Name.expect }
        for e in expects { require(lowercased(e.value) == Name.continue100, "Expect \(text(e.value)) accepted") }
        require(r.expectContinue == (!expects.isEmpty && r.versionMinor == 1), "expectContinue \(r.expectContinue)")
        let callbacks = fields.filter { $0.lower == Name.callbackURL }.count
        require(Int(r.callbackURLCount) == min(callbacks, 255), "callbackURLCount \(r.callbackURLCount) of \(callbacks)")
        // What the intake reads.
        _ = r.first(named: "idempotency-key")
        _ = r.first(.contentType)

        return RequestHead(
            method: method, target: target, path: path, versionMinor: r.versionMinor, fields: fields,
            framing: r.framing, declaredContentLength: r.declaredContentLength, keepAlive: r.keepAlive,
            expectContinue: r.expectContinue, connectionNominates: r.connectionNominates,
            callbackURLs: r.callbackURLCount, host: r.hostValue.map(Array.init), idempotent: r.isIdempotent)
    }
}

/// No NUL, no CR without LF, no line folded onto the one before (obs-fold).
func checkRawHead(_ r: MessageReader) {
    let head = UnsafeBufferPointer(start: r.bytes, count: r.headLength)
    for (i, c) in head.enumerated() {
        require(c != 0, "NUL at \(i) accepted")
        if c == 0x0D { require(i + 1 < head.count && head[i + 1] == 0x0A, "bare CR at \(i) accepted") }
        if c == 0x0A && i + 1 < head.count { require(head[i + 1] != 0x20 && head[i + 1] != 0x09, "obs-fold at \(i) accepted") }
    }
}

/// RFC 9110 §5.6.1 list elements: comma-separated, whitespace-trimmed, empty ones dropped.
func listElements(_ value: [UInt8]) -> [[UInt8]] {
    value.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false).compactMap { element in
        let trimmed = element.drop { $0 == 0x20 || $0 == 0x09 }.reversed().drop { $0 == 0x20 || $0 == 0x09 }.reversed()
        return trimmed.isEmpty ? nil : Array(trimmed)
    }
}
