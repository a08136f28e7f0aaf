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
    /// Per capacity, a reader for each arrival, reused (`reset`) as a pooled
    /// upstream connection reuses its reader.
    nonisolated(unsafe) static let readers = [64 * 1024, 200].map {
        (whole: MessageReader(kind: .response, capacity: $0), split: MessageReader(kind: .response, capacity: $0))
    }

    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let once = [Piece(range: 0..<data.count, ownChain: false)]
        let pieces = arrival(of: data)
        for requestWasHead in [false, true] {
            for (wholeReader, splitReader) in readers {
                let whole = ClientSide(wholeReader, requestWasHead: requestWasHead, checked: true, verbose: false)
                whole.arrive(data, once)
                let split = ClientSide(splitReader, requestWasHead: requestWasHead, checked: false, verbose: false)
                split.arrive(data, pieces)
                guard whole.transcript.digest != split.transcript.digest else { continue }
                let wholeText = ClientSide(wholeReader, requestWasHead: requestWasHead, checked: false, verbose: true)
                wholeText.arrive(data, once)
                let splitText = ClientSide(splitReader, requestWasHead: requestWasHead, checked: false, verbose: true)
                splitText.arrive(data, pieces)
                require(false, """
                    read differently in pieces (HEAD \(requestWasHead), capacity \(wholeReader.capacity)):
                    whole:  \(wholeText.transcript.lines!.joined(separator: " | "))
                    pieces: \(splitText.transcript.lines!.joined(separator: " | "))
                    """)
            }
        }
    }
}

/// `HTTPClientConnection`'s read loop without the socket and the pool.
final class ClientSide {
    enum State: Equatable {
        /// Reading the head; `received`: some of the response came.
        case head(received: Bool)
        case body
        case idle, closed
    }

    let reader: MessageReader
    /// Beyond what the reader was given, and beyond the head once read.
    private var poison: HeadPoison
    let input = EventBuffer()
    let decoded = EventBuffer()
    private let staging = EventBuffer()
    private let checked: Bool
    private(set) var transcript: Transcript
    private var state = State.head(received: false)
    private var bodyCount: Int64 = 0

    /// An exchange on `reader`; `checked`: the rules are checked too.
    init(_ reader: MessageReader, requestWasHead: Bool, checked: Bool, verbose: Bool) {
        reader.reset()
        reader.requestWasHead = requestWasHead
        self.reader = reader
        self.checked = checked
        poison = HeadPoison(reader)
        transcript = Transcript(verbose: verbose)
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
        guard state != .closed else { return }
        if !input.isEmpty, case .head = state { state = .head(received: true) }
        while true {
            if case .head = state {
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
                if checked { checkHead() }
                recordHead()
                if reader.status < 200 {
                    if reader.status == 101 { fail("badResponse"); return }
                    let wasHead = reader.requestWasHead
                    reader.reset()
                    reader.requestWasHead = wasHead
                    continue
                }
                state = .body
                continue
            }
            let done: Bool
            do {
                done = try reader.readBody(from: input, into: decoded)
            } catch {
                bodyCount += Int64(decoded.count)
                transcript.stream(decoded)
                fail("badResponse")
                return
            }
            bodyCount += Int64(decoded.count)
            transcript.stream(decoded)
            require(reader.bodyBytesRead == bodyCount, "bodyBytesRead \(reader.bodyBytesRead), read \(bodyCount)")
            if case .length(let n) = reader.framing { require(bodyCount <= n, "more body than Content-Length") }
            if done {
                if case .length(let n) = reader.framing { require(bodyCount == n, "body of \(bodyCount), Content-Length \(n)") }
                if reader.framing == .none { require(bodyCount == 0, "a body without framing") }
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
        case .body where reader.framing == .untilClose:
            readable()
            guard state == .body else { return }
            reader.finishAtClose()
            require(reader.isMessageComplete, "close-delimited body not complete at the close")
            close(reused: false)
        case .body, .head(received: true):
            fail("truncated")
        case .head(received: false):
            fail("reset")
        }
    }

    /// The response ended: its body, and whether the connection is reused.
    private func close(reused: Bool) {
        transcript.endBody("body", count: bodyCount)
        transcript.record("reused", reused)
        state = .closed
    }

    /// `ClientFailure` as the delegate hears it, after the body relayed so far.
    private func fail(_ failure: StaticString) {
        transcript.endBody("body", count: bodyCount)
        transcript.record("failed", failure)
        state = .closed
    }

    /// What the exchange and the relay read of a head.
    private func recordHead() {
        let r = reader
        transcript.record("status", r.status)
        transcript.record("reason", r.reason)
        transcript.record("version", r.versionMinor)
        transcript.recordFields(of: r)
        transcript.record("framing", r.framing)
        transcript.record("declared", r.declaredContentLength ?? -1)
        transcript.record("keep-alive", r.keepAlive)
    }

    /// The rules the reader promises of a response head, written out again.
    private func checkHead() {
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
    }
}
