import Config
import HTTP
import Loop
import Proxy
import Store

#if canImport(Glibc)
import Glibc
#endif

/// One attempt to deliver a job's webhook: the body (the captured result,
/// or the status JSON of a failed job) signed, then a POST through the
/// upstream-exchange core within `callback.timeout`; the receiver's status
/// decides (`DeliveryRule`). Its answer's body is read and dropped.
final class WebhookAttempt: HTTPClientDelegate {
    private unowned let deliverer: WebhookDeliverer
    let id: JobID
    private let record: JobRecord
    private let callback: JobCallback
    private let url: CallbackURL
    private let settings: Callback
    private let upstream: UpstreamExchange
    private var timer: Timer!
    private var body: StoredBody = .empty
    private var signature = ""
    private var timestamp: Int64 = 0
    private var answer: (status: Int, retryAfter: Int?)?
    private var ended = false

    /// Bodies up to this size are signed on the loop; larger ones on the
    /// deliverer's blocking thread, read from their file in pieces.
    static let signOnLoopBytes: Int64 = 256 * 1024

    /// The result, when the deliverer kept it since the job's end.
    private var response: JobResponse?

    init(deliverer: WebhookDeliverer, record: JobRecord, callback: JobCallback, url: CallbackURL, settings: Callback,
         response: JobResponse? = nil) {
        self.response = response
        self.deliverer = deliverer
        self.id = record.id
        self.record = record
        self.callback = callback
        self.url = url
        self.settings = settings
        webhookID = callback.round == 1 ? record.id.text : "\(record.id.text)-\(callback.round)"
        upstream = UpstreamExchange(proxy: deliverer.jobs.proxy)
        timer = Timer(loop: deliverer.loop) { [unowned self] in self.perform(.failed(.timedOut)) }
    }

    /// The same on every attempt of one round (receivers deduplicate by it).
    let webhookID: String

    private var secrets: [String] { settings.secrets }

    // MARK: Preparing

    /// Waits for a delivery slot, then reads the body and signs it: a burst
    /// of due deliveries holds at most `max_concurrency` bodies.
    func prepare(target: UpstreamTarget) {
        guard !ended else { return }
        let bound = LoopBound(self, loop: deliverer.loop)
        switch target.gate.acquire(GateWaiter(loop: deliverer.loop) { bound.value.granted(target) }, force: true) {
        case .acquired: granted(target)
        case .queued: break
        case .rejected: end(.unsendable("queue_full"))
        }
    }

    private func granted(_ target: UpstreamTarget) {
        slot = target.gate
        guard !ended else { return releaseSlot() }
        let jobs = deliverer.jobs
        timestamp = wallClockMillis() / 1000
        if record.status == .completed, let response {
            self.response = nil
            sign(response.body, then: target)
        } else if record.status == .completed {
            jobs.readResponse(of: id) { [self] response in
                guard let response else { return end(.unsendable("result_missing")) }
                sign(response.body, then: target)
            }
        } else {
            let w = ByteWriter(capacity: 1024)
            let context = JobJSON.Context(base: jobs.config.publicBase ?? [], jobsPath: jobs.config.jobsPath, estimate: nil)
            JobJSON.writeStatus(record, context, into: w)
            sign(.inline(Array(w.bytes)), then: target)
        }
    }

    private func sign(_ body: StoredBody, then target: UpstreamTarget) {
        self.body = body
        var signer = WebhookSigner(keys: deliverer.keys(for: record.route, settings), id: webhookID, timestamp: timestamp)
        switch body {
        case .inline(let bytes):
            bytes.withUnsafeBytes { signer.update($0) }
            signature = signer.finalize()
            begin(target)
        case .file(let path, let size) where size <= Self.signOnLoopBytes:
            guard signFile(path, into: &signer) else { return end(.unsendable("result_missing")) }
            signature = signer.finalize()
            begin(target)
        case .file(let path, _):
            let bound = LoopBound(self, loop: deliverer.loop)
            let (secrets, id, timestamp) = (secrets, webhookID, timestamp)
            deliverer.blocking.loops[0].execute {
                var signer = WebhookSigner(secrets: secrets, id: id, timestamp: timestamp)
                let ok = signFile(path, into: &signer)
                let signature = ok ? signer.finalize() : ""
                bound.loop.execute {
                    let me = bound.value
                    guard ok else { return me.end(.unsendable("result_missing")) }
                    me.signature = signature
                    me.begin(target)
                }
            }
        }
    }

    /// The delivery slot, while this attempt holds it and its exchange has
    /// not begun (from then on the exchange core gives it back).
    private var slot: (any ConcurrencyGate)?

    private func releaseSlot() {
        slot?.release()
        slot = nil
    }

    // MARK: The exchange

    private func begin(_ target: UpstreamTarget) {
        guard !ended else { return releaseSlot() }
        slot = nil  // the exchange core releases it
        timer.schedule(after: settings.timeout)
        upstream.begin(owner: self, target: target, resendable: true, isHead: false)
        perform(.begin(.acquired))
    }

    private func perform(_ event: UpstreamExchangeMachine.Event) {
        switch upstream.handle(event) {
        case .send:
            send()
        case .complete:
            let answer = self.answer ?? (0, nil)
            end(.answered(status: answer.status, retryAfter: answer.retryAfter))
        case .fail(let failure, _):
            end(Self.result(of: failure))
        case .none, .connect, .reconnect, .deliverHead, .refuse, .releaseSlot, .abandon:
            break
        }
    }

    static func result(of failure: UpstreamFailure) -> AttemptResult {
        switch failure {
        case .connection(.unreachable), .connection(.connectTimeout): return .connectFailed
        case .connection(.tlsFailed): return .tlsFailed
        case .connection(.reset), .connection(.truncated), .connection(.badResponse), .badResponseHead: return .broken
        case .timedOut: return .timedOut
        }
    }

    private func send() {
        guard let connection = upstream.connection, let out = connection.output else {
            end(.broken)
            return
        }
        let w = deliverer.jobs.proxy.scratchWriter
        w.reset()
        w.append("POST ")
        w.append(string: url.requestTarget)
        w.append(" HTTP/1.1\r\n")
        w.header("Host", url.hostHeader)
        w.header("User-Agent", "coatcheck")
        if record.status == .completed {
            if let type = record.contentType { w.header("Content-Type", type) }
        } else {
            w.header("Content-Type", "application/json")
        }
        w.header("Content-Length", decimal: body.size)
        w.header(jobID: id)
        w.header("Job-Status", record.status.rawValue)
        if record.status == .completed, let status = record.responseStatus {
            w.header("Job-Response-Status", decimal: Int64(status))
        }
        w.header("webhook-id", webhookID)
        w.header("webhook-timestamp", decimal: timestamp)
        w.header("webhook-signature", signature)
        w.append("\r\n")
        w.flush(to: out)
        guard addStoredBody(body, to: out) else {
            end(.unsendable("result_missing"))
            return
        }
        connection.writeNow()
    }

    func clientConnected(_ connection: HTTPClientConnection) {
        perform(.connected)
    }

    func clientResponseHead(_ connection: HTTPClientConnection, response: MessageReader) {
        guard upstream.handle(.responseHead) == .deliverHead else { return }
        answer = (response.status, response.first(named: "retry-after").flatMap {
            retryAfterSeconds(response.value($0), nowMillis: wallClockMillis())
        })
    }

    func clientResponseBody(_ connection: HTTPClientConnection, buffer: EventBuffer) {
        buffer.removeAll()
    }

    func clientResponseEnd(_ connection: HTTPClientConnection) {
        perform(.responseEnd)
    }

    func clientFailed(_ connection: HTTPClientConnection, failure: ClientFailure) {
        perform(.failed(.connection(failure)))
    }

    func clientOutputDrained(_ connection: HTTPClientConnection) {}

    // MARK: Ending

    /// Ends the attempt with `result`, once: before the exchange began (the
    /// slot, if taken, is given back here) or from it.
    func end(_ result: AttemptResult) {
        guard !ended else { return }
        ended = true
        timer.cancel()
        releaseSlot()
        deliverer.finish(id, route: record.route, callback: callback, result)
    }
}

/// Feeds the file at `path` to `signer` in 64 KiB pieces; false if it cannot be read.
private func signFile(_ path: String, into signer: inout WebhookSigner) -> Bool {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var chunk = [UInt8](repeating: 0, count: 64 * 1024)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n == 0 { return true }
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        chunk.withUnsafeBytes { signer.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }
}
