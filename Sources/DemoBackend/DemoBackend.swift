public import HTTP
public import Loop
public import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// `coatcheck demo-backend`: a small, slow, synchronous HTTP service for the
/// quick start and the tests (SPEC §1).
///
/// - `/sleep?ms=N`: answers 200 after N ms
/// - `/status/CODE`: answers CODE
/// - `/echo`: answers 200 with the request body (streamed back as it arrives)
///   and its Content-Type; `X-Echo-Method` and `X-Echo-Path` name the request
/// - `/bytes/N`: answers N bytes (a repeating pattern), streamed
/// - `/stats`: requests seen, in flight now, and the most ever in flight
/// - `/webhook`: a webhook receiver for the quick start: prints one line
///   per delivery (its job, status, webhook id and size) and answers 204
public final class DemoBackend: HTTPService {
    public let loop: EventLoop
    public private(set) var server: HTTPServer!
    public let stats: DemoStats

    public init(loop: EventLoop, stats: DemoStats = DemoStats()) {
        self.loop = loop
        self.stats = stats
        self.server = HTTPServer(loop: loop, service: self, limits: DemoBackend.limits, budget: ConnectionBudget(limit: 100_000))
    }

    static let limits: HTTPServerLimits = {
        var l = HTTPServerLimits()
        l.maxRequestBody = Int64.max / 2
        l.bodyTimeout = .seconds(3600)
        return l
    }()

    public func handler(for request: MessageReader, on connection: HTTPServerConnection) -> any RequestHandler {
        let target = String(decoding: request.path, as: UTF8.self)
        let (path, query) = splitQuery(target)
        stats.begin()
        let h = DemoRequest(backend: self, connection: connection)
        if path == "/stats" {
            let body = Array("{\"requests\":\(stats.requests),\"in_flight\":\(stats.inFlight - 1),\"max_in_flight\":\(stats.maxInFlight)}".utf8)
            h.respond(200, body: body)
        } else if path == "/sleep" {
            let ms = Int(queryValue(query, "ms") ?? "0") ?? 0
            h.sleep(ms: max(0, ms))
        } else if path.hasPrefix("/status/"), let code = Int(path.dropFirst(8)), (200...599).contains(code) {
            h.respond(code, body: Array("{\"status\":\(code)}".utf8))
        } else if path == "/echo" {
            h.echo(request: request)
        } else if path.hasPrefix("/bytes/"), let n = Int64(path.dropFirst(7)), n >= 0 {
            h.bytes(n)
        } else if path == "/webhook" {
            h.receiveWebhook(request)
        } else {
            h.respond(404, body: Array("{\"error\":{\"code\":\"not_found\",\"message\":\"try /sleep?ms=N /status/CODE /echo /bytes/N /webhook\"}}".utf8))
        }
        return h
    }
}

/// Counters the tests read back through `/stats`.
public final class DemoStats: Sendable {
    private let counts = Mutex<(requests: Int, inFlight: Int, max: Int)>((0, 0, 0))

    public init() {}

    func begin() {
        counts.withLock {
            $0.requests += 1
            $0.inFlight += 1
            $0.max = max($0.max, $0.inFlight)
        }
    }

    func end() { counts.withLock { $0.inFlight -= 1 } }

    public var requests: Int { counts.withLock { $0.requests } }
    public var inFlight: Int { counts.withLock { $0.inFlight } }
    public var maxInFlight: Int { counts.withLock { $0.max } }
}

final class DemoRequest: RequestHandler {
    let backend: DemoBackend
    let connection: HTTPServerConnection
    private var timer: Timer?
    private var echoing = false
    private var remaining: Int64 = 0
    private var finished = false
    /// `/webhook`: the delivery's headers as printed, and its body size so far.
    private var webhook: (line: String, size: Int)?

    init(backend: DemoBackend, connection: HTTPServerConnection) {
        self.backend = backend
        self.connection = connection
    }

    func respond(_ status: Int, body: [UInt8]) {
        finish()
        if status == 204 || status == 304 {
            // These carry no body (RFC 9110 §15.3.5, §15.4.5).
            connection.startResponse(status: status, framing: .none(contentLength: nil)) { _ in }
            connection.endResponse()
            return
        }
        body.withUnsafeBufferPointer {
            connection.respond(status: status, contentType: "application/json", body: $0)
        }
    }

    func sleep(ms: Int) {
        let t = Timer(loop: backend.loop) { [unowned self] in
            self.timer = nil
            self.respond(200, body: Array("{\"slept_ms\":\(ms)}".utf8))
        }
        timer = t
        t.schedule(after: .milliseconds(ms))
    }

    func echo(request: MessageReader) {
        echoing = true
        let method = Array(request.methodName)
        let path = Array(request.path)
        let contentType = request.first(.contentType).map { Array(request.value($0)) }
        let framing: ResponseFraming
        if case .length(let n) = request.framing {
            framing = .contentLength(n)
        } else if request.framing == .none {
            framing = .contentLength(0)
        } else {
            framing = .streamed
        }
        connection.startResponse(status: 200, framing: framing) { w in
            w.append("Content-Type: ")
            w.append(contentType ?? Array("application/octet-stream".utf8))
            w.append("\r\nX-Echo-Method: ")
            w.append(method)
            w.append("\r\nX-Echo-Path: ")
            w.append(path)
            w.append("\r\n")
        }
    }

    func bytes(_ n: Int64) {
        remaining = n
        connection.startResponse(status: 200, framing: .contentLength(n)) { w in
            w.header("Content-Type", "application/octet-stream")
        }
        pump()
    }

    /// Writes the pattern until the client's output is congested, then waits.
    private func pump() {
        let chunk = DemoRequest.pattern
        while remaining > 0 && connection.isOpen {
            let n = Int(min(remaining, Int64(chunk.count)))
            chunk.withUnsafeBufferPointer { connection.writeBody(UnsafeBufferPointer(rebasing: $0[0..<n])) }
            remaining -= Int64(n)
            // Wait for the drain only if there is more to write: the end of
            // the response must not hang on a drain callback.
            if remaining > 0 && connection.isOutputCongested { return }
        }
        if remaining == 0 {
            finish()
            connection.endResponse()
        }
    }

    static let pattern: [UInt8] = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }

    func receiveWebhook(_ request: MessageReader) {
        func header(_ name: StaticString) -> String {
            request.first(named: name).map { String(decoding: request.value($0), as: UTF8.self) } ?? "-"
        }
        webhook = ("webhook: job \(header("job-id")) \(header("job-status")) response \(header("job-response-status"))"
                   + " webhook-id \(header("webhook-id")) timestamp \(header("webhook-timestamp"))"
                   + " signature \(header("webhook-signature"))", 0)
    }

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {
        if webhook != nil {
            webhook!.size += buffer.count
            buffer.removeAll()
        }
        if echoing {
            connection.writeBody(buffer)
            if connection.isOutputCongested { connection.pauseReadingBody() }
        }
    }

    func requestEnd(connection: HTTPServerConnection) {
        if let webhook {
            let line = Array("\(webhook.line) bytes \(webhook.size)\n".utf8)
            _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
            respond(204, body: [])
            return
        }
        if echoing {
            finish()
            connection.endResponse()
        }
    }

    func outputDrained(connection: HTTPServerConnection) {
        if echoing {
            connection.resumeReadingBody()
        } else if remaining > 0 {
            pump()
        }
    }

    func connectionClosed(connection: HTTPServerConnection) {
        timer?.cancel()
        timer = nil
        finish()
    }

    private func finish() {
        if !finished {
            finished = true
            backend.stats.end()
        }
    }
}

func splitQuery(_ target: String) -> (String, String) {
    guard let q = target.firstIndex(of: "?") else { return (target, "") }
    return (String(target[..<q]), String(target[target.index(after: q)...]))
}

func queryValue(_ query: String, _ key: String) -> String? {
    for pair in query.split(separator: "&") {
        let kv = pair.split(separator: "=", maxSplits: 1)
        if kv.count == 2 && kv[0] == key { return String(kv[1]) }
    }
    return nil
}
