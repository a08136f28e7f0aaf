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
    /// Per capacity, a reader for each arrival, reused from run to run as a
    /// connection reuses its reader (`reset`), and as unreadable past its
    /// valid bytes as a fresh one.
    nonisolated(unsafe) static let readers = [16 * 1024, 200].map {
        (whole: MessageReader(kind: .request, capacity: $0), split: MessageReader(kind: .request, capacity: $0))
    }

    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let once = [Piece(range: 0..<data.count, ownChain: false)]
        let pieces = arrival(of: data)
        for (wholeReader, splitReader) in readers {
            // The rules are checked on the whole arrival; the pieces must
            // then read the same (equal digests).
            let whole = ServerSide(wholeReader, checked: true, verbose: false)
            whole.arrive(data, once)
            let split = ServerSide(splitReader, checked: false, verbose: false)
            split.arrive(data, pieces)
            guard whole.transcript.digest != split.transcript.digest else { continue }
            let wholeText = ServerSide(wholeReader, checked: false, verbose: true)
            wholeText.arrive(data, once)
            let splitText = ServerSide(splitReader, checked: false, verbose: true)
            splitText.arrive(data, pieces)
            require(false, """
                read differently in pieces (capacity \(wholeReader.capacity)):
                whole:  \(wholeText.transcript.lines!.joined(separator: " | "))
                pieces: \(splitText.transcript.lines!.joined(separator: " | "))
                """)
        }
    }
}

/// `HTTPServerConnection`'s read loop without the socket, the timers and
/// the handler.
final class ServerSide {
    enum Phase: Int { case idle, head, body, closed }

    let reader: MessageReader
    /// Beyond what the reader was given, and beyond the head once read.
    private var poison: HeadPoison
    let input = EventBuffer()
    let decoded = EventBuffer()
    private let staging = EventBuffer()
    private let checked: Bool
    private(set) var transcript: Transcript
    private var phase = Phase.idle
    private var bodyCount: Int64 = 0
    /// `limits.max_request_body`'s default.
    static let maxRequestBody: Int64 = 8 * 1024 * 1024

    /// A new connection on `reader`; `checked`: the rules are checked too.
    init(_ reader: MessageReader, checked: Bool, verbose: Bool) {
        reader.reset()
        self.reader = reader
        self.checked = checked
        poison = HeadPoison(reader)
        transcript = Transcript(verbose: verbose)
    }

    deinit { poison.clear() }

    func arrive(_ data: UnsafeBufferPointer<UInt8>, _ pieces: [Piece]) {
        for piece in pieces {
            input.append(data, piece, staging: staging)
            process()
        }
        transcript.record("waiting", phase.rawValue)
        transcript.endBody("body so far", count: bodyCount)
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
                poison.set(from: min(input.count, reader.capacity))
                let result: MessageReader.HeadResult
                do {
                    result = try reader.readHead(from: input)
                } catch {
                    refuse(error)
                    return
                }
                guard result == .complete else { return }
                poison.set(from: reader.headLength)
                if checked { checkHead() }
                recordHead()
                if case .length(let n) = reader.framing, n > ServerSide.maxRequestBody {
                    refuse(.bodyTooLarge)
                    return
                }
                bodyCount = 0
                phase = .body
            case .body:
                let done: Bool
                do {
                    done = try reader.readBody(from: input, into: decoded)
                } catch {
                    bodyCount += Int64(decoded.count)
                    transcript.stream(decoded)
                    transcript.endBody("body", count: bodyCount)
                    refuse(error)
                    return
                }
                bodyCount += Int64(decoded.count)
                transcript.stream(decoded)
                require(reader.bodyBytesRead == bodyCount, "bodyBytesRead \(reader.bodyBytesRead), read \(bodyCount)")
                if case .length(let n) = reader.framing { require(bodyCount <= n, "more body than Content-Length") }
                guard done else { return }
                switch reader.framing {
                case .length(let n): require(bodyCount == n, "body of \(bodyCount), Content-Length \(n)")
                case .none: require(bodyCount == 0, "a body without framing")
                case .chunked: break
                case .untilClose: require(false, "a close-delimited request")
                }
                transcript.endBody("body", count: bodyCount)
                bodyCount = 0
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
        transcript.record(error)
        transcript.record("method", reader.methodName)
        transcript.record("target", reader.target)
        transcript.record("path", reader.path)
        phase = .closed
        input.removeAll()
    }

    /// What the layers above read of an accepted head.
    private func recordHead() {
        let r = reader
        transcript.record("method", r.methodName)
        transcript.record("target", r.target)
        transcript.record("path", r.path)
        transcript.record("version", r.versionMinor)
        transcript.recordFields(of: r)
        transcript.record("framing", r.framing)
        transcript.record("declared", r.declaredContentLength ?? -1)
        transcript.record("keep-alive", r.keepAlive)
        transcript.record("continue", r.expectContinue)
        transcript.record("nominates", r.connectionNominates)
        transcript.record("callbacks", Int(r.callbackURLCount))
        if let host = r.hostValue { transcript.record("host", host) }
        transcript.record("idempotent", r.isIdempotent)
        _ = r.first(named: "idempotency-key")
        _ = r.first(.contentType)
    }

    /// The accepted head, checked against the rules the reader promises
    /// (RFC 9112 as DESIGN.md tightens it), each written out here again.
    private func checkHead() {
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
        // Expect is a list whose empty elements are ignored (RFC 9110 §5.6.1):
        // `Expect: ,` asks for nothing; any member but 100-continue is a 417.
        let expects = fields.filter { $0.lower == Name.expect }.flatMap { listElements($0.value) }
        for e in expects { require(lowercased(e) == Name.continue100, "Expect \(text(e)) accepted") }
        require(r.expectContinue == (!expects.isEmpty && r.versionMinor == 1), "expectContinue \(r.expectContinue)")
        let callbacks = fields.filter { $0.lower == Name.callbackURL }.count
        require(Int(r.callbackURLCount) == min(callbacks, 255), "callbackURLCount \(r.callbackURLCount) of \(callbacks)")
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
