import Config
import HTTP
import Store
import Logging
import Loop
import Proxy

/// One upstream exchange on behalf of a job, or of an `auto` request that
/// may become one: sends the stored request with `Job-Id` and
/// `Job-Attempt`, and captures the whole response (spooled, bounded by
/// `max_result_body`) within the upstream's `timeout`.
///
/// The upstream side is `UpstreamExchange`, shared with sync proxying. The
/// runner holds its upstream slot from `start` (its caller took it) and the
/// core gives it back exactly once; `finished` is called once, unless
/// `abort` came first.
final class JobRunner: HTTPClientDelegate {
    enum Outcome {
        /// A whole response; `retryAfter` is its Retry-After in seconds.
        case response(JobResponse, contentType: String?, retryAfter: Int?)
        case failure(JobErrorCode, String, Retry)
    }

    /// Whether a failed attempt may be tried again (SPEC §4, upstream retries).
    enum Retry {
        /// No: a timeout, a bad or too large response.
        case no
        /// The request never reached the upstream: always safe.
        case unsent
        /// Sent, and the connection closed before any response byte: only
        /// for requests safe to send twice.
        case sentNoResponse
    }

    /// The response head as kept for the job.
    struct CapturedHead {
        var status: Int
        var reason: [UInt8]
        /// End-to-end header lines.
        var headers: [UInt8]
        var contentType: String?
        /// Retry-After, in seconds from when it arrived.
        var retryAfter: Int?
    }

    enum Phase {
        /// Made; `start` not called yet.
        case idle
        /// The exchange is under way; no response head yet.
        case exchanging
        /// The head is kept; the body is being spooled.
        case capturing(CapturedHead)
        /// Over: `finished` was called, or the run was aborted.
        case ended
    }

    unowned let jobs: JobLoop
    let id: JobID
    let target: UpstreamTarget
    let request: JobRequest
    let attempt: Int
    private let isHead: Bool
    private let resendable: Bool
    private let maxBody: Int64
    private var finished: ((Outcome) -> Void)?

    private(set) var phase = Phase.idle
    private let upstream: UpstreamExchange
    private let capture = BodySpool()
    private var timer: Timer!

    init(jobs: JobLoop, id: JobID, target: UpstreamTarget, request: JobRequest, attempt: Int,
         isHead: Bool, resendable: Bool, maxBody: Int64, finished: @escaping (Outcome) -> Void) {
        self.jobs = jobs
        self.id = id
        self.target = target
        self.request = request
        self.attempt = attempt
        self.isHead = isHead
        self.resendable = resendable
        self.maxBody = maxBody
        self.finished = finished
        upstream = UpstreamExchange(proxy: jobs.proxy)
        timer = Timer(loop: jobs.loop) { [unowned self] in self.perform(.failed(.timedOut)) }
    }

    /// Starts the exchange; the caller has acquired an upstream slot for it.
    func start() {
        guard case .idle = phase else { return }
        phase = .exchanging
        jobs.engine.exchangeStarted()
        timer.schedule(after: target.config.timeout)
        upstream.begin(owner: self, target: target, resendable: resendable, isHead: isHead)
        perform(.begin(.acquired))
    }

    /// Stops at once (DELETE of a running job, or the client of an `auto`
    /// request left): the upstream sees the connection close.
    func abort() {
        switch phase {
        case .exchanging, .capturing:
            finished = nil
            perform(.abandon)
        case .idle, .ended:
            break
        }
    }

    /// Feeds the upstream core and does this side of its action.
    private func perform(_ event: UpstreamExchangeMachine.Event) {
        switch upstream.handle(event) {
        case .send:
            send()
        case .complete:
            complete()
        case .fail(let failure, _):
            let (code, message, retry) = Self.describe(failure)
            end(.failure(code, message, retry))
        case .abandon:
            end(nil)
        case .none, .connect, .reconnect, .deliverHead, .refuse, .releaseSlot:
            break
        }
    }

    /// A failure as the job records it, and whether it may be retried.
    static func describe(_ failure: UpstreamFailure) -> (JobErrorCode, String, Retry) {
        switch failure {
        case .connection(.unreachable): return (.upstreamUnreachable, "upstream refused or unreachable", .unsent)
        case .connection(.tlsFailed(let reason)): return (.upstreamUnreachable, reason, .unsent)
        case .connection(.connectTimeout): return (.upstreamTimeout, "upstream connect timed out", .unsent)
        case .connection(.reset): return (.upstreamReset, "upstream closed the connection before responding", .sentNoResponse)
        case .connection(.badResponse): return (.upstreamBadResponse, "upstream sent a malformed response", .no)
        case .connection(.truncated): return (.upstreamReset, "upstream response was truncated", .no)
        case .badResponseHead:
            return (.upstreamBadResponse, "HTTP/1.1 response without Content-Length or chunked framing", .no)
        case .timedOut: return (.upstreamTimeout, "upstream did not answer within its timeout", .no)
        }
    }

    /// Ends the run: the slot is already given back; `outcome` is reported
    /// (nil: aborted, or a local failure reported by the caller).
    private func end(_ outcome: Outcome?) {
        guard !isEnded else { return }
        phase = .ended
        timer.cancel()
        jobs.engine.exchangeEnded()
        capture.discard()  // after `finish` the file is the response's: only a partial capture goes
        let done = finished
        finished = nil
        if let outcome { done?(outcome) }
    }

    private var isEnded: Bool {
        if case .ended = phase { return true }
        return false
    }

    /// A failure found on this side (the stored request, the spool): the
    /// exchange is abandoned and the failure reported.
    private func failLocally(_ code: JobErrorCode, _ message: String, _ retry: Retry = .no) {
        guard !isEnded else { return }
        let done = finished
        finished = nil
        perform(.abandon)
        done?(.failure(code, message, retry))
    }

    func clientConnected(_ connection: HTTPClientConnection) {
        perform(.connected)
    }

    private func send() {
        guard let connection = upstream.connection, let out = connection.output else {
            failLocally(.upstreamReset, "upstream connection closed before the request was sent", .unsent)
            return
        }
        let w = jobs.proxy.scratchWriter
        w.reset()
        w.append(request.head)
        w.append("Job-Id: ")
        w.append(jobID: id)
        w.append("\r\nJob-Attempt: ")
        w.append(decimal: Int64(attempt))
        w.append("\r\n")
        if request.declaresBody || request.body.size > 0 {
            w.header("Content-Length", decimal: request.body.size)
        }
        w.append("\r\n")
        w.flush(to: out)
        guard addStoredBody(request.body, to: out) else {
            failLocally(.upstreamBadResponse, "the stored request body is missing")
            return
        }
        connection.writeNow()
    }

    func clientOutputDrained(_ connection: HTTPClientConnection) {}

    // MARK: Response

    func clientResponseHead(_ connection: HTTPClientConnection, response: MessageReader) {
        if response.framing == .untilClose && response.versionMinor != 0 {
            perform(.failed(.badResponseHead))
            return
        }
        guard upstream.handle(.responseHead) == .deliverHead else { return }
        let w = jobs.proxy.scratchWriter
        w.reset()
        ResponseSerializer.writeHeaders(of: response, into: w)
        phase = .capturing(CapturedHead(
            status: response.status, reason: Array(response.reason), headers: Array(w.bytes),
            contentType: response.first(.contentType).map { String(decoding: response.value($0), as: UTF8.self) },
            retryAfter: response.first(named: "retry-after").flatMap {
                retryAfterSeconds(response.value($0), nowMillis: wallClockMillis())
            }))
    }

    func clientResponseBody(_ connection: HTTPClientConnection, buffer: EventBuffer) {
        do {
            try capture.append(buffer, limit: maxBody, spoolPath: jobs.engine.spoolPath(id, "res"))
        } catch .tooLarge {
            failLocally(.responseTooLarge, "upstream response exceeds jobs.max_result_body (\(maxBody) bytes)")
        } catch {
            failLocally(.upstreamBadResponse, "cannot spool the response: \(error)")
        }
    }

    func clientResponseEnd(_ connection: HTTPClientConnection) {
        perform(.responseEnd)
    }

    func clientFailed(_ connection: HTTPClientConnection, failure: ClientFailure) {
        if case .tlsFailed(let reason) = failure {
            jobs.log.warning("upstream \(upstream.target.name): \(reason)", metadata: ["job": "\(id)"])
        }
        perform(.failed(.connection(failure)))
    }

    private func complete() {
        guard case .capturing(let head) = phase else { return }
        let body: StoredBody
        do {
            body = try capture.finish()
        } catch {
            end(.failure(.upstreamBadResponse, "cannot spool the response: \(error)", .no))
            return
        }
        let response = JobResponse(status: head.status, reason: head.reason, headers: head.headers, body: body)
        end(.response(response, contentType: head.contentType, retryAfter: head.retryAfter))
    }
}
