import CHTTPParser
import CLibevent

#if canImport(Glibc)
import Glibc
#endif

/// One header field: byte ranges into the head buffer, and its kind.
public struct HeaderField: Sendable {
    public var nameStart: Int32
    public var nameEnd: Int32
    public var valueStart: Int32
    public var valueEnd: Int32
    public var kind: HeaderKind
}

/// How a message body is delimited (RFC 9112 §6).
public enum BodyFraming: Sendable, Equatable {
    case none
    case length(Int64)
    case chunked
    /// Until the connection closes (responses only).
    case untilClose
}

/// Reads HTTP/1.x messages, one at a time, from a libevent input buffer.
///
/// The head is copied once into a buffer owned here (at most
/// `max_header_bytes`), parsed by http_parser, and then checked against the
/// stricter rules of RFC 9112 that http_parser leaves to its caller. Names and
/// values stay byte ranges into that buffer, valid until the next `readHead`.
/// Bodies: fixed-length and close-delimited ones move buffer chains without
/// copying; chunked ones go through `ChunkedDecoder`.
public final class MessageReader {
    public enum Kind { case request, response }
    public enum HeadResult { case incomplete, complete }

    public let kind: Kind
    public let capacity: Int

    /// The head bytes; `headLength` of them are valid after `.complete`.
    public let bytes: UnsafeMutablePointer<UInt8>
    public private(set) var headLength = 0
    /// The head's fields, valid until the next `readHead` (like the bytes).
    public var fields: UnsafeBufferPointer<HeaderField> {
        UnsafeBufferPointer(start: fieldStorage, count: fieldCount)
    }
    /// Owned here and grown by doubling: the parser's callbacks append
    /// without the checks a Swift array makes per element written.
    private var fieldStorage: UnsafeMutablePointer<HeaderField>
    private var fieldCapacity = 32
    private var fieldCount = 0

    // Request line.
    /// http_parser's method number, or `unknownMethod` for a head rejected
    /// before its method was known to be one.
    public private(set) var method: UInt8 = MessageReader.unknownMethod
    public private(set) var targetStart = 0
    public private(set) var targetEnd = 0
    /// Where the origin-form path starts inside the target (absolute-form is reduced).
    public private(set) var pathStart = 0
    // Status line.
    public private(set) var status = 0
    public private(set) var reasonStart = 0
    public private(set) var reasonEnd = 0

    public private(set) var versionMinor = 1
    public private(set) var framing: BodyFraming = .none
    /// The Content-Length field's value, when there was one.
    public private(set) var declaredContentLength: Int64?
    public private(set) var keepAlive = true
    public private(set) var expectContinue = false
    /// Index of the Host field, or -1.
    public private(set) var hostIndex = -1
    /// The Connection header names fields other than close/keep-alive.
    public private(set) var connectionNominates = false
    /// `X-Callback-Url` fields in the request (counted as the head is
    /// validated: a sync route refuses them without another scan).
    public private(set) var callbackURLCount: UInt8 = 0
    /// A response to HEAD (set before reading the response head).
    public var requestWasHead = false

    private let parser: UnsafeMutablePointer<http_parser>
    /// A per-reader copy of the callbacks: no global lookup per message.
    private let settings: UnsafeMutablePointer<http_parser_settings>
    private var headersDone = false
    private var messageDone = false
    private var lastWasValue = true
    private var scannedTo = 0
    private var chunked = ChunkedDecoder()
    /// Bytes of a fixed-length body still to come.
    public private(set) var remaining: Int64 = 0
    /// Decoded body bytes read so far for this message.
    public private(set) var bodyBytesRead: Int64 = 0

    public init(kind: Kind, capacity: Int) {
        self.kind = kind
        self.capacity = max(capacity, 64)
        self.bytes = .allocate(capacity: self.capacity)
        self.parser = .allocate(capacity: 1)
        self.settings = .allocate(capacity: 1)
        self.settings.initialize(to: MessageReader.callbacks)
        self.fieldStorage = .allocate(capacity: fieldCapacity)
        reset()
    }

    deinit {
        bytes.deallocate()
        parser.deallocate()
        settings.deallocate()
        fieldStorage.deallocate()
    }

    /// Forgets the previous message; the next `readHead` starts a new one.
    public func reset() {
        http_parser_init(parser, kind == .request ? HTTP_REQUEST : HTTP_RESPONSE)
        parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        headLength = 0
        fieldCount = 0
        headersDone = false
        messageDone = false
        lastWasValue = true
        scannedTo = 0
        framing = .none
        declaredContentLength = nil
        keepAlive = true
        expectContinue = false
        hostIndex = -1
        connectionNominates = false
        callbackURLCount = 0
        remaining = 0
        bodyBytesRead = 0
        status = 0
        // Nothing of the previous message may leak into this one (an error
        // answer to it, or its log line, reads these).
        method = Self.unknownMethod
        targetStart = 0
        targetEnd = 0
        pathStart = 0
        reasonStart = 0
        reasonEnd = 0
        versionMinor = 1
        chunked.reset()
    }

    // MARK: Head

    /// Looks for a complete head at the front of `input`. On `.complete` the
    /// head bytes have been drained from `input`; on error nothing is drained.
    public func readHead(from input: EventBuffer) throws(HTTPError) -> HeadResult {
        try readHead(from: input.raw)
    }

    func readHead(from input: OpaquePointer) throws(HTTPError) -> HeadResult {
        let available = evbuffer_get_length(input)
        let n = min(available, capacity)
        if n > scannedTo {
            _ = evbuffer_copyout(input, bytes, n)
        }
        guard let end = findHeadEnd(n) else {
            scannedTo = max(0, n - 2)
            if available >= capacity {
                if kind == .request {
                    method = methodOfRequestLine(n)
                    if !hasLineFeed(n) { throw .targetTooLong }
                }
                throw kind == .request ? .headersTooLarge : .badResponse
            }
            return .incomplete
        }
        headLength = end
        do {
            try parseHead()
        } catch {
            // Metrics and the access log name a rejected request's method
            // when its line starts with one (`validate` has already set it
            // if the parser got that far).
            if kind == .request && method == Self.unknownMethod { method = methodOfRequestLine(end) }
            throw error
        }
        evbuffer_drain(input, end)
        return .complete
    }

    /// A method that no request gets from the parser: the head was rejected
    /// before it named a method this proxy knows (`FOO`, `get`, garbage).
    /// Metrics label it `other`.
    public static let unknownMethod: UInt8 = 255

    /// The method the first `n` head bytes start with (a known name, then
    /// SP), else `unknownMethod`. Only for heads already rejected.
    private func methodOfRequestLine(_ n: Int) -> UInt8 {
        guard let token = leadingToken(n) else { return Self.unknownMethod }
        for (i, name) in Self.methodNames.enumerated() where name.utf8.elementsEqual(token) { return UInt8(i) }
        return Self.unknownMethod
    }

    private func hasLineFeed(_ n: Int) -> Bool {
        memchr(bytes, 0x0A, n) != nil
    }

    /// Offset just past the empty line ending the head, or nil.
    private func findHeadEnd(_ n: Int) -> Int? {
        var i = scannedTo
        while i < n {
            guard let hit = memchr(bytes + i, 0x0A, n - i) else { return nil }
            let lf = bytes.distance(to: hit.assumingMemoryBound(to: UInt8.self))
            if lf + 1 < n && bytes[lf + 1] == 0x0A { return lf + 2 }
            if lf + 2 < n && bytes[lf + 1] == 0x0D && bytes[lf + 2] == 0x0A { return lf + 3 }
            if lf + 2 >= n { return nil }
            i = lf + 1
        }
        return nil
    }

    private func parseHead() throws(HTTPError) {
        var parsed = execute()
        var errno = CHTTPParser_errno(parser)
        // http_parser takes only SP, not HTAB, after a Content-Length value;
        // both are OWS (RFC 9110 §5.6.3) and trimmed from every value anyway,
        // so the rare head with an HTAB ending a line is parsed again with
        // those as SP.
        if errno == HPE_INVALID_CONTENT_LENGTH && tabsEndingLinesToSpaces() {
            http_parser_init(parser, kind == .request ? HTTP_REQUEST : HTTP_RESPONSE)
            parser.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            fieldCount = 0
            lastWasValue = true
            headersDone = false
            parsed = execute()
            errno = CHTTPParser_errno(parser)
        }
        // Only the head is fed in, so the parser ends exactly at its end;
        // whether a body follows is decided by `validate`, not by the parser.
        if errno != HPE_OK {
            throw mapParserError(errno)
        }
        guard headersDone, parsed == headLength else {
            throw kind == .request ? .badRequest : .badResponse
        }
        try validate()
    }

    private func execute() -> Int {
        bytes.withMemoryRebound(to: CChar.self, capacity: headLength) {
            http_parser_execute(parser, settings, $0, headLength)
        }
    }

    /// HTABs followed by nothing but SP/HTAB up to the line's end become SP.
    /// True if there was one.
    private func tabsEndingLinesToSpaces() -> Bool {
        var changed = false
        var i = headLength - 1
        var trailing = false
        while i >= 0 {
            switch bytes[i] {
            case 0x0A, 0x0D: trailing = true
            case 0x20: break
            case 0x09:
                if trailing {
                    bytes[i] = 0x20
                    changed = true
                }
            default: trailing = false
            }
            i -= 1
        }
        return changed
    }

    private func mapParserError(_ errno: http_errno) -> HTTPError {
        guard kind == .request else { return .badResponse }
        switch errno {
        case HPE_INVALID_METHOD where leadingToken(headLength) != nil:
            // A method, well formed, that http_parser does not know (RFC 9110 §9.1).
            return .methodNotImplemented
        case HPE_INVALID_TRANSFER_ENCODING:
            return .unsupportedEncoding
        case HPE_INVALID_CONTENT_LENGTH, HPE_UNEXPECTED_CONTENT_LENGTH:
            return .badFraming
        case HPE_INVALID_HEADER_TOKEN, HPE_LF_EXPECTED:
            return .badHeader
        case HPE_INVALID_URL:
            return .badTarget
        case HPE_INVALID_VERSION:
            return .versionNotSupported
        case HPE_HEADER_OVERFLOW:
            return .headersTooLarge
        default:
            return .badRequest
        }
    }

    /// The token the first `n` head bytes start with (after the empty lines
    /// §2.2 lets a server skip), when SP follows it: a request line's method.
    private func leadingToken(_ n: Int) -> UnsafeBufferPointer<UInt8>? {
        var i = 0
        while i < n && (bytes[i] == 0x0D || bytes[i] == 0x0A) { i += 1 }
        let start = i
        while i < n && isTchar(bytes[i]) { i += 1 }
        guard i > start && i < n && bytes[i] == 0x20 else { return nil }
        return UnsafeBufferPointer(start: bytes + start, count: i - start)
    }

    /// The RFC 9112 rules http_parser does not enforce (DESIGN.md lists them).
    private func validate() throws(HTTPError) {
        let isRequest = kind == .request
        if isRequest { method = UInt8(CHTTPParser_method(parser)) }
        let major = Int(parser.pointee.http_major)
        versionMinor = Int(parser.pointee.http_minor)
        // Debian's http_parser is built non-strict: it takes "HTTX/1.1".
        guard hasVersionLiteral() else { throw isRequest ? .badRequest : .badResponse }
        if major != 1 { throw isRequest ? .versionNotSupported : .badResponse }
        if versionMinor > 1 { versionMinor = 1 }

        // Raw bytes: NUL, bare CR, and obs-fold (a line starting with SP/HT).
        // Controls and DEL: a clean head (the usual) skips the per-part checks below.
        var controls = false
        switch rawFault(UnsafePointer(bytes), headLength) {
        case .none: break
        case .controls: controls = true
        case .badByte: throw isRequest ? .badHeader : .badResponse
        case .obsFold: throw isRequest ? .obsFold : .badResponse
        }

        if isRequest {
            // One SP between method and target (RFC 9112 §3): http_parser
            // skips a run of them.
            guard targetStart >= 2, bytes[targetStart - 1] == 0x20, bytes[targetStart - 2] != 0x20 else {
                throw .badRequest
            }
            if method == UInt8(HTTP_CONNECT.rawValue) || method == UInt8(HTTP_TRACE.rawValue) {
                throw .methodNotAllowed
            }
        } else {
            status = Int(CHTTPParser_status(parser))
            if status < 100 || status > 599 { throw .badResponse }
            if controls && hasControl(UnsafePointer(bytes) + reasonStart, reasonEnd - reasonStart) { throw .badResponse }
        }

        var contentLengthSeen = false
        var transferEncodingSeen = false
        var contentLength: Int64 = 0
        var connectionClose = false
        var connectionKeepAlive = false

        for index in 0..<fieldCount {
            var f = fieldStorage[index]
            let name = bytes + Int(f.nameStart)
            let nameLength = Int(f.nameEnd - f.nameStart)
            guard nameLength > 0 else { throw isRequest ? .badHeader : .badResponse }
            // A name is tokens only (RFC 9110 §5.1). http_parser, built
            // non-strict, takes SP as a token byte and refuses every other
            // non-tchar one (HPE_INVALID_HEADER_TOKEN): SP is the one left to
            // refuse ("Transfer-Encoding : chunked"), a word at a time.
            if hasSpace(name, nameLength, readable: headLength - Int(f.nameStart)) {
                throw isRequest ? .badHeader : .badResponse
            }
            // Trim trailing OWS; leading OWS http_parser already skipped.
            while f.valueEnd > f.valueStart && (bytes[Int(f.valueEnd) - 1] == 0x20 || bytes[Int(f.valueEnd) - 1] == 0x09) {
                f.valueEnd -= 1
            }
            if controls && hasControl(UnsafePointer(bytes) + Int(f.valueStart), Int(f.valueEnd - f.valueStart)) {
                throw isRequest ? .badHeader : .badResponse
            }
            f.kind = HeaderKind.classify(name, nameLength)
            fieldStorage[index] = f
            let value = UnsafeBufferPointer(start: bytes + Int(f.valueStart), count: Int(f.valueEnd - f.valueStart))

            switch f.kind {
            case .host where isRequest:
                if hostIndex >= 0 || !isValidAuthority(value) { throw .badHost }
                hostIndex = index
            case .contentLength:
                if contentLengthSeen { throw isRequest ? .badFraming : .badResponse }
                contentLengthSeen = true
                guard let n = parseDecimal(value) else { throw isRequest ? .badFraming : .badResponse }
                contentLength = n
                declaredContentLength = n
            case .transferEncoding:
                if transferEncodingSeen { throw isRequest ? .badFraming : .badResponse }
                transferEncodingSeen = true
                if value.isEmpty { throw isRequest ? .badFraming : .badResponse }
                if !(value.count == 7 && equalsLower(value.baseAddress!, 7, "chunked")) {
                    throw isRequest ? .unsupportedEncoding : .badResponse
                }
            case .connection:
                forEachToken(value) { token in
                    if token.count == 5 && equalsLower(token.baseAddress!, 5, "close") {
                        connectionClose = true
                    } else if token.count == 10 && equalsLower(token.baseAddress!, 10, "keep-alive") {
                        connectionKeepAlive = true
                    } else {
                        connectionNominates = true
                    }
                }
            case .callbackURL where isRequest:
                callbackURLCount &+= callbackURLCount == .max ? 0 : 1
            case .expect where isRequest:
                // A list (RFC 9110 §10.1.1, §5.6.1: empty elements ignored);
                // any member other than 100-continue is refused.
                var other = false
                var proceed = false
                forEachToken(value) { token in
                    if token.count == 12 && equalsLower(token.baseAddress!, 12, "100-continue") {
                        proceed = true
                    } else {
                        other = true
                    }
                }
                if other { throw .expectationFailed }
                if proceed { expectContinue = versionMinor == 1 }
            default:
                break
            }
        }

        if transferEncodingSeen {
            if contentLengthSeen || versionMinor == 0 { throw isRequest ? .badFraming : .badResponse }
        }
        keepAlive = versionMinor == 1 ? !connectionClose : (connectionKeepAlive && !connectionClose)

        if isRequest {
            // SPEC §6: a missing Host is refused, HTTP/1.0 included.
            if hostIndex < 0 { throw .badHost }
            try validateTarget()
            framing = transferEncodingSeen ? .chunked : (contentLength > 0 ? .length(contentLength) : .none)
        } else {
            if requestWasHead || status < 200 || status == 204 || status == 304 {
                framing = .none
            } else if transferEncodingSeen {
                framing = .chunked
            } else if contentLengthSeen {
                framing = contentLength > 0 ? .length(contentLength) : .none
            } else {
                framing = .untilClose
            }
        }
        if case .length(let n) = framing { remaining = n }
        if case .none = framing { messageDone = true }
    }

    /// "HTTP/d.d" exactly where the grammar puts it: after the target and one
    /// space, ending the request line; or opening the status line.
    private func hasVersionLiteral() -> Bool {
        var at: Int
        if kind == .request {
            at = targetEnd + 1
            guard targetEnd < headLength, bytes[targetEnd] == 0x20 else { return false }
        } else {
            at = 0
        }
        guard at + 8 <= headLength else { return false }
        guard bytes[at] == UInt8(ascii: "H"), bytes[at + 1] == UInt8(ascii: "T"), bytes[at + 2] == UInt8(ascii: "T"),
              bytes[at + 3] == UInt8(ascii: "P"), bytes[at + 4] == UInt8(ascii: "/") else { return false }
        let d1 = bytes[at + 5], dot = bytes[at + 6], d2 = bytes[at + 7]
        guard d1 >= 0x30 && d1 <= 0x39 && dot == UInt8(ascii: ".") && d2 >= 0x30 && d2 <= 0x39 else { return false }
        at += 8
        if kind == .request {
            return at < headLength && (bytes[at] == 0x0D || bytes[at] == 0x0A)
        }
        return at < headLength && bytes[at] == 0x20
    }

    /// RFC 9112 §3.2: origin-form, absolute-form (reduced to its path, and
    /// only for the host the request names), asterisk-form for OPTIONS.
    private func validateTarget() throws(HTTPError) {
        let n = targetEnd - targetStart
        guard n > 0 else { throw .badTarget }
        for j in targetStart..<targetEnd {
            let c = bytes[j]
            // No controls, spaces or non-ASCII; '#' never belongs in a request-target.
            if c <= 0x20 || c >= 0x7F || c == UInt8(ascii: "#") { throw .badTarget }
        }
        let first = bytes[targetStart]
        if first == UInt8(ascii: "/") {
            pathStart = targetStart
            return
        }
        if first == UInt8(ascii: "*") && n == 1 && method == UInt8(HTTP_OPTIONS.rawValue) {
            pathStart = targetStart
            return
        }
        // absolute-form: scheme "://" authority path-abempty [ "?" query ]
        let p = bytes + targetStart
        var schemeLength = 0
        if n > 7 && equalsLower(p, 7, "http://") { schemeLength = 7 }
        else if n > 8 && equalsLower(p, 8, "https://") { schemeLength = 8 }
        else { throw .badTarget }
        var authorityEnd = targetStart + schemeLength
        while authorityEnd < targetEnd && bytes[authorityEnd] != UInt8(ascii: "/") && bytes[authorityEnd] != UInt8(ascii: "?") {
            authorityEnd += 1
        }
        let authority = UnsafeBufferPointer(start: bytes + targetStart + schemeLength, count: authorityEnd - targetStart - schemeLength)
        guard hostIndex >= 0, !authority.isEmpty, isValidAuthority(authority) else { throw .badTarget }
        let host = fieldStorage[hostIndex]
        let hostValue = UnsafeBufferPointer(start: bytes + Int(host.valueStart), count: Int(host.valueEnd - host.valueStart))
        // A request naming another host than its Host field is refused: this
        // is a reverse proxy, never an open forward proxy.
        guard asciiEqualsIgnoringCase(hostValue, authority) else {
            throw .badTarget
        }
        // Forward the path; "http://h?q" has none and becomes "/?q" upstream
        // via the serializer's handling of a missing leading slash.
        pathStart = authorityEnd
    }

    // MARK: Body

    public var isMessageComplete: Bool { messageDone }

    /// Moves decoded body bytes from `input` into `destination`. Returns
    /// true once the whole body has been read. Chunk framing errors throw.
    public func readBody(from input: EventBuffer, into destination: EventBuffer) throws(HTTPError) -> Bool {
        try readBody(from: input.raw, into: destination.raw)
    }

    func readBody(from input: OpaquePointer, into destination: OpaquePointer) throws(HTTPError) -> Bool {
        if messageDone { return true }
        switch framing {
        case .none:
            messageDone = true
        case .length:
            let available = Int64(evbuffer_get_length(input))
            let n = min(available, remaining)
            if n > 0 {
                evbuffer_remove_buffer(input, destination, Int(n))
                remaining -= n
                bodyBytesRead += n
            }
            if remaining == 0 { messageDone = true }
        case .untilClose:
            let n = evbuffer_get_length(input)
            if n > 0 {
                evbuffer_add_buffer(destination, input)
                bodyBytesRead += Int64(n)
            }
        case .chunked:
            try readChunked(from: input, into: destination)
        }
        return messageDone
    }

    /// For `.untilClose`: the peer closed, so the body is whole.
    public func finishAtClose() {
        if case .untilClose = framing { messageDone = true }
    }

    private func readChunked(from input: OpaquePointer, into destination: OpaquePointer) throws(HTTPError) {
        let before = evbuffer_get_length(destination)
        let ok = chunked.decode(from: input, into: destination)
        bodyBytesRead += Int64(evbuffer_get_length(destination) - before)
        guard ok else { throw kind == .request ? .badChunk : .badResponse }
        if chunked.isDone { messageDone = true }
    }

    // MARK: http_parser callbacks (trampolines: context pointer back to self)

    private static let callbacks: http_parser_settings = {
        var s = http_parser_settings()
        http_parser_settings_init(&s)
        s.on_url = { p, at, n in withReader(p) { $0.onURL(at!, n) } }
        s.on_status = { p, at, n in withReader(p) { $0.onStatus(at!, n) } }
        s.on_header_field = { p, at, n in withReader(p) { $0.onHeaderField(at!, n) } }
        s.on_header_value = { p, at, n in withReader(p) { $0.onHeaderValue(at!, n) } }
        s.on_headers_complete = { p in withReader(p) { $0.onHeadersComplete() } }
        return s
    }()

    /// The reader parsing: it is inside `http_parser_execute`, called by the
    /// reader itself, so it is alive; no retain and release per callback.
    @inline(__always)
    private static func withReader(_ p: UnsafeMutablePointer<http_parser>?, _ body: (MessageReader) -> Int32) -> Int32 {
        Unmanaged<MessageReader>.fromOpaque(p!.pointee.data)._withUnsafeGuaranteedRef(body)
    }

    private func offset(_ at: UnsafePointer<CChar>) -> Int32 {
        Int32(UnsafeRawPointer(bytes).distance(to: UnsafeRawPointer(at)))
    }

    @inline(__always)
    private func onURL(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        // The head is parsed whole from one buffer: one call per message.
        targetStart = Int(offset(at))
        targetEnd = targetStart + n
        return 0
    }

    @inline(__always)
    private func onStatus(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        reasonStart = Int(offset(at))
        reasonEnd = reasonStart + n
        return 0
    }

    @inline(__always)
    private func onHeaderField(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        let o = offset(at)
        if lastWasValue {
            if fieldCount == fieldCapacity { growFields() }
            fieldStorage[fieldCount] = HeaderField(nameStart: o, nameEnd: o + Int32(n), valueStart: o, valueEnd: o, kind: .other)
            fieldCount += 1
        } else {
            fieldStorage[fieldCount - 1].nameEnd = o + Int32(n)
        }
        lastWasValue = false
        return 0
    }

    @inline(__always)
    private func onHeaderValue(_ at: UnsafePointer<CChar>, _ n: Int) -> Int32 {
        // http_parser marks Transfer-Encoding present for any name that
        // starts with it ("Transfer-Encodings"), and takes a value of
        // "chunked" followed by HTAB for another coding: `validate` decides
        // Transfer-Encoding itself, so the parser's mark is dropped.
        parser.pointee.uses_transfer_encoding = 0
        let o = offset(at)
        if !lastWasValue {
            fieldStorage[fieldCount - 1].valueStart = o
        }
        fieldStorage[fieldCount - 1].valueEnd = o + Int32(n)
        lastWasValue = true
        return 0
    }

    private func growFields() {
        let bigger = UnsafeMutablePointer<HeaderField>.allocate(capacity: fieldCapacity * 2)
        bigger.moveInitialize(from: fieldStorage, count: fieldCount)
        fieldStorage.deallocate()
        fieldStorage = bigger
        fieldCapacity *= 2
    }

    @inline(__always)
    private func onHeadersComplete() -> Int32 {
        headersDone = true
        if kind == .response {
            let code = Int(CHTTPParser_status(parser))
            // No body follows, whatever Content-Length says (RFC 9112 §6.3).
            if requestWasHead || code < 200 || code == 204 || code == 304 { return 1 }
        }
        return 0
    }



    // MARK: Accessors

    @inlinable
    public func name(_ f: HeaderField) -> UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: bytes + Int(f.nameStart), count: Int(f.nameEnd - f.nameStart))
    }

    @inlinable
    public func value(_ f: HeaderField) -> UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: bytes + Int(f.valueStart), count: Int(f.valueEnd - f.valueStart))
    }

    public var target: UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: bytes + targetStart, count: targetEnd - targetStart)
    }

    /// The origin-form path and query to forward.
    public var path: UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: bytes + pathStart, count: targetEnd - pathStart)
    }

    public var reason: UnsafeBufferPointer<UInt8> {
        UnsafeBufferPointer(start: bytes + reasonStart, count: reasonEnd - reasonStart)
    }

    public var hostValue: UnsafeBufferPointer<UInt8>? {
        hostIndex >= 0 ? value(fieldStorage[hostIndex]) : nil
    }

    public var methodName: UnsafeBufferPointer<UInt8> {
        let s = http_method_str(http_method(UInt32(method)))!
        return UnsafeBufferPointer(start: UnsafeRawPointer(s).assumingMemoryBound(to: UInt8.self), count: strlen(s))
    }

    public var isHead: Bool { method == UInt8(HTTP_HEAD.rawValue) }

    /// The methods the parser knows, by `method` number (metrics' labels).
    public static let methodNames: [String] = {
        var names: [String] = []
        for m in 0..<256 {
            guard let s = http_method_str(http_method(UInt32(m))) else { break }
            let name = String(cString: s)
            if name.hasPrefix("<") { break }
            names.append(name)
        }
        return names
    }()

    /// GET, HEAD, PUT, DELETE, OPTIONS (RFC 9110 §9.2.2; TRACE is refused anyway).
    public var isIdempotent: Bool {
        switch UInt32(method) {
        case HTTP_GET.rawValue, HTTP_HEAD.rawValue, HTTP_PUT.rawValue, HTTP_DELETE.rawValue, HTTP_OPTIONS.rawValue:
            return true
        default:
            return false
        }
    }

    /// First field of `kind`, if any.
    public func first(_ kind: HeaderKind) -> HeaderField? {
        fields.first { $0.kind == kind }
    }

    /// First field whose name is `lower` (a lower-case literal), any case.
    public func first(named lower: StaticString) -> HeaderField? {
        fields.first { headerName(name($0), equals: lower) }
    }

    /// True if a Connection field of this message names `f`'s field name.
    public func isNominatedByConnection(_ f: HeaderField) -> Bool {
        guard connectionNominates else { return false }
        let name = self.name(f)
        for c in fields where c.kind == .connection {
            var found = false
            forEachToken(value(c)) { token in
                if asciiEqualsIgnoringCase(token, name) {
                    found = true
                }
            }
            if found { return true }
        }
        return false
    }
}

/// Calls `body` with each comma-separated, OWS-trimmed, non-empty element.
public func forEachToken(_ value: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
    var i = 0
    let n = value.count
    while i < n {
        while i < n && (value[i] == 0x20 || value[i] == 0x09 || value[i] == UInt8(ascii: ",")) { i += 1 }
        let start = i
        while i < n && value[i] != UInt8(ascii: ",") { i += 1 }
        var end = i
        while end > start && (value[end - 1] == 0x20 || value[end - 1] == 0x09) { end -= 1 }
        if end > start {
            body(UnsafeBufferPointer(rebasing: value[start..<end]))
        }
    }
}

/// 1*DIGIT, at most 18 of them (no sign, no spaces, no commas).
@inline(__always)
func parseDecimal(_ value: UnsafeBufferPointer<UInt8>) -> Int64? {
    guard !value.isEmpty, value.count <= 18 else { return nil }
    var n: Int64 = 0
    for c in value {
        guard c >= 0x30 && c <= 0x39 else { return nil }
        n = n * 10 + Int64(c - 0x30)
    }
    return n
}

/// RFC 3986 authority without userinfo: reg-name / IPv4 / [IP-literal], optional :port.
/// Its bytes as a 128-bit set, as `isTchar`: letters, digits, "-._~:[]%",
/// and the sub-delims "!$&'()*+,;=".
@inline(__always)
func isValidAuthority(_ value: UnsafeBufferPointer<UInt8>) -> Bool {
    guard !value.isEmpty else { return false }
    let low: UInt64 = 0x2FFF_7FF2_0000_0000   // 0x00-0x3F: ! $ % & ' ( ) * + , - . 0-9 : ; =
    let high: UInt64 = 0x47FF_FFFE_AFFF_FFFE  // 0x40-0x7F: A-Z [ ] _ a-z ~
    for c in value {
        guard c < 128, (c < 64 ? low : high) >> UInt64(c & 63) & 1 == 1 else { return false }
    }
    return true
}

// MARK: - Word-at-a-time byte checks

/// The checks every head byte goes through, eight bytes per step (SWAR):
/// a word with no byte of interest costs a handful of instructions; only a
/// word that may hold one is looked at byte by byte, by the same rules.
private enum Word {
    static let ones: UInt64 = 0x0101_0101_0101_0101
    static let highs: UInt64 = 0x8080_8080_8080_8080

    @inline(__always)
    static func load(_ p: UnsafePointer<UInt8>) -> UInt64 {
        UnsafeRawPointer(p).loadUnaligned(as: UInt64.self)
    }

    /// Some byte of `w` is below `n` (n <= 0x80). Exact as a yes/no answer.
    @inline(__always)
    static func anyBelow(_ w: UInt64, _ n: UInt64) -> Bool {
        (w &- ones &* n) & ~w & highs != 0
    }

    @inline(__always)
    static func anyEqual(_ w: UInt64, _ b: UInt64) -> Bool {
        anyBelow(w ^ (ones &* b), 1)
    }

    /// The high bit of each byte of `w` that equals `b`, and of no other.
    @inline(__always)
    static func equal(_ w: UInt64, _ b: UInt64) -> UInt64 {
        below(w ^ (ones &* b), 1)
    }

    /// `below(w, 0x20) | equal(w, 0x7F)` in fewer steps: of a byte under
    /// 0x80, the low seven bits plus 0x60 reach bit 7 unless they are under
    /// 0x20, and plus 1 only when they are 0x7F (no carry leaves a byte).
    @inline(__always)
    static func controlOrDel(_ w: UInt64) -> UInt64 {
        let x = w & 0x7F7F_7F7F_7F7F_7F7F
        return (~(x &+ ones &* 0x60) | (x &+ ones)) & ~w & highs
    }

    /// The high bit of each byte of `w` that is below `n` (n <= 0x80), and
    /// of no other: exact per byte (no borrow runs between bytes).
    @inline(__always)
    static func below(_ w: UInt64, _ n: UInt64) -> UInt64 {
        let lows: UInt64 = 0x7F7F_7F7F_7F7F_7F7F
        return ~(((w & lows) &+ ones &* (0x80 - n)) | w) & highs
    }
}

/// A SP among the `n` bytes at `p`, of which `readable` (at least `n`) may
/// be read. A name is short and followed by more of the head: its last
/// bytes are read as one word with what follows masked off.
@inline(__always)
func hasSpace(_ p: UnsafePointer<UInt8>, _ n: Int, readable: Int) -> Bool {
    var i = 0
    while i + 8 <= n {
        if Word.anyEqual(Word.load(p + i), 0x20) { return true }
        i += 8
    }
    let rest = n - i
    if rest == 0 { return false }
    if i + 8 <= readable {
        // Little-endian: the word's first bytes are its low ones.
        return Word.anyEqual(Word.load(p + i) & (UInt64.max >> UInt64(64 - 8 * rest)), 0x20)
    }
    while i < n {
        if p[i] == 0x20 { return true }
        i += 1
    }
    return false
}

enum RawFault {
    case none
    case badByte
    case obsFold
    /// No fault, but a control byte other than HT, CR and LF, or DEL, is
    /// somewhere in the head: where decides the error (value, reason,
    /// target), so the per-part checks run.
    case controls
}

/// A head's raw faults: NUL, a CR not followed by LF, a line that starts
/// with SP or HT (obs-fold), in byte order; else whether any other control
/// byte or DEL is in it. Each word yields the exact positions of its bytes
/// below 0x20 and of DEL, and only those are looked at.
func rawFault(_ p: UnsafePointer<UInt8>, _ n: Int) -> RawFault {
    var controls = false
    var i = 0
    while i + 8 <= n {
        let w = Word.load(p + i)
        var hits = Word.controlOrDel(w)
        while hits != 0 {
            let j = i &+ hits.trailingZeroBitCount &>> 3
            if let fault = rawFault(at: j, p, n, &controls) { return fault }
            hits &= hits &- 1
        }
        i &+= 8
    }
    while i < n {
        let c = p[i]
        if c < 0x20 || c == 0x7F, let fault = rawFault(at: i, p, n, &controls) { return fault }
        i += 1
    }
    return controls ? .controls : .none
}

@inline(__always)
private func rawFault(at j: Int, _ p: UnsafePointer<UInt8>, _ n: Int, _ controls: inout Bool) -> RawFault? {
    switch p[j] {
    case 0: return .badByte
    case 0x0D: return j + 1 < n && p[j + 1] == 0x0A ? nil : .badByte
    case 0x0A: return j + 1 < n && (p[j + 1] == 0x20 || p[j + 1] == 0x09) ? .obsFold : nil
    case 0x09: return nil
    default:
        controls = true
        return nil
    }
}

/// A control byte other than HT, or DEL: never in a field value or a reason phrase.
func hasControl(_ p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    var i = 0
    while i + 8 <= n {
        let w = Word.load(p + i)
        if Word.anyBelow(w, 0x20) || Word.anyEqual(w, 0x7F) { break }
        i += 8
    }
    while i < n {
        let c = p[i]
        if (c < 0x20 && c != 0x09) || c == 0x7F { return true }
        i += 1
    }
    return false
}
