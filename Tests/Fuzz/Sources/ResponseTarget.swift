import HTTP

/// The upstream client's response reader, fed as
/// `HTTPClientConnection.readable` feeds it: interim (1xx) responses
/// skipped, 101 refused, the head, the body (fixed-length, chunked, or
/// until the upstream closes), then the decision to keep the connection;
/// the input's end is the upstream closing.
///
/// Every input runs as the answer to a GET and to a HEAD, with the
/// client's head limit and a tiny one, each arriving whole and in pieces:
/// the pieces must not change what is read.
enum ResponseTarget {
    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let pieces = arrival(of: data)
        for requestWasHead in [false, true] {
            for capacity in [64 * 1024, 200] {
                let whole = ClientSide(capacity: capacity, requestWasHead: requestWasHead)
                whole.arrive(data, [Piece(range: 0..<data.count, ownChain: false)])
                let split = ClientSide(capacity: capacity, requestWasHead: requestWasHead)
                split.arrive(data, pieces)
                require(whole.events == split.events,
                        "read differently in pieces (HEAD \(requestWasHead), capacity \(capacity)):\n\(whole.events)\n\(split.events)")
            }
        }
    }
}

struct ResponseHead: Equatable {
    var status: Int
    var reason: [UInt8]
    var versionMinor: Int
    var fields: [FieldCopy]
    var framing: BodyFraming
    var keepAlive: Bool
}

enum ClientEvent: Equatable {
    case interim(Int)
    case head(ResponseHead)
    /// The response ended: its body, and whether the connection is reused.
    case end([UInt8], reused: Bool)
    /// `ClientFailure` as the delegate hears it, with the body relayed so far.
    case failed(String, [UInt8])
}

/// `HTTPClientConnection`'s read loop without the socket and the pool.
final class ClientSide {
    enum State { case active, idle, closed }

    let reader: MessageReader
    /// Beyond what the reader was given, and beyond the head once read.
    private var poison: HeadPoison
    let input = EventBuffer()
    let decoded = EventBuffer()
    private let staging = EventBuffer()
    private(set) var events: [ClientEvent] = []
    private var state = State.active
    private var headDone = false
    private var received = false
    private var body: [UInt8] = []

    init(capacity: Int, requestWasHead: Bool) {
        reader = MessageReader(kind: .response, capacity: capacity)
        poison = HeadPoison(reader)
        reader.requestWasHead = requestWasHead
    }

    deinit { poison.clear() }

    func arrive(_ data: UnsafeBufferPointer<UInt8>, _ pieces: [Piece]) {
        for piece in pieces {
            input.append(data, piece, staging: staging)
            readable()
        }
        closedByPeer()
    }

    private func readable() {
        if state == .idle {
            // Bytes on an idle upstream connection: it is broken, closed.
            if !input.isEmpty { close(reused: false) }
            return
        }
        guard state == .active else { return }
        if !input.isEmpty { received = true }
        while true {
            if !headDone {
                poison.set(from: min(input.count, reader.capacity))
                let result: MessageReader.HeadResult
                do {
                    result = try reader.readHead(from: input)
                } catch {
                    fail("badResponse")
                    return
                }
                guard result == .complete else { return }
                poison.set(from: reader.headLength)
                let head = checkedHead()
                if reader.status < 200 {
                    if reader.status == 101 { fail("badResponse"); return }
                    events.append(.interim(reader.status))
                    let wasHead = reader.requestWasHead
                    reader.reset()
                    reader.requestWasHead = wasHead
                    continue
                }
                headDone = true
                events.append(.head(head))
                continue
            }
            let done: Bool
            do {
                done = try reader.readBody(from: input, into: decoded)
                body += decoded.takeBytes()
            } catch {
                body += decoded.takeBytes()
                fail("badResponse")
                return
            }
            require(reader.bodyBytesRead == Int64(body.count), "bodyBytesRead \(reader.bodyBytesRead), read \(body.count)")
            if case .length(let n) = reader.framing { require(Int64(body.count) <= n, "more body than Content-Length") }
            if done {
                if case .length(let n) = reader.framing { require(Int64(body.count) == n, "body of \(body.count), Content-Length \(n)") }
                if reader.framing == .none { require(body.isEmpty, "a body without framing") }
                // Kept only when delimited, keep-alive, and nothing follows.
                if !reader.keepAlive || reader.framing == .untilClose || !input.isEmpty {
                    close(reused: false)
                } else {
                    state = .idle
                }
            }
            return
        }
    }

    /// `channelClosed` with no error: the input ended.
    private func closedByPeer() {
        switch state {
        case .idle:
            close(reused: true)
        case .closed:
            break
        case .active:
            if headDone && reader.framing == .untilClose {
                readable()
                guard state == .active else { return }
                reader.finishAtClose()
                require(reader.isMessageComplete, "close-delimited body not complete at the close")
                close(reused: false)
            } else {
                fail(received || headDone ? "truncated" : "reset")
            }
        }
    }

    private func close(reused: Bool) {
        events.append(.end(body, reused: reused))
        state = .closed
    }

    private func fail(_ failure: String) {
        events.append(.failed(failure, body))
        state = .closed
    }

    private func checkedHead() -> ResponseHead {
        let r = reader
        require(r.headLength > 0 && r.headLength <= r.capacity, "head length \(r.headLength)")
        checkRawHead(r)
        let fields = checkedFields(of: r)
        require((100...599).contains(r.status), "status \(r.status) accepted")
        require(r.versionMinor == 0 || r.versionMinor == 1, "version 1.\(r.versionMinor)")
        let reason = Array(r.reason)
        require(r.reasonStart >= 0 && r.reasonEnd <= r.headLength, "reason range")
        require(reason.allSatisfy { $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }, "reason \(text(reason)) has a control byte")
        let (length, chunked) = checkFraming(fields, versionMinor: r.versionMinor)
        // RFC 9112 §6.3, in its order.
        let expected: BodyFraming =
            if r.requestWasHead || r.status < 200 || r.status == 204 || r.status == 304 { .none }
            else if chunked { .chunked }
            else if let length { length > 0 ? .length(length) : .none }
            else { .untilClose }
        require(r.framing == expected, "framing \(r.framing), expected \(expected)")
        var close = false, keepAlive = false
        for f in fields where f.lower == Name.connection {
            for token in listElements(f.value) {
                if lowercased(token) == Name.close { close = true }
                if lowercased(token) == Name.keepAlive { keepAlive = true }
            }
        }
        let persistent = r.versionMinor == 1 ? !close : keepAlive && !close
        require(r.keepAlive == persistent, "keepAlive \(r.keepAlive)")
        return ResponseHead(
            status: r.status, reason: reason, versionMinor: r.versionMinor, fields: fields, framing: r.framing,
            keepAlive: r.keepAlive)
    }
}
