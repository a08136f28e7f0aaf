import CLibevent
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
/// States: `idle` -> `connecting` -> `exchanging` -> `ended`. The runner
/// holds its upstream slot from `start` and gives it back exactly once, when
/// it ends; `finished` is called once, unless `abort` came first.
final class JobRunner: HTTPClientDelegate {
    enum State { case idle, connecting, exchanging, ended }

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

    unowned let jobs: JobLoop
    let id: JobID
    let target: UpstreamTarget
    let request: JobRequest
    let attempt: Int
    private let isHead: Bool
    private let resendable: Bool
    private let maxBody: Int64
    private var finished: ((Outcome) -> Void)?

    private(set) var state = State.idle
    private var upstream: HTTPClientConnection?
    private let capture = BodySpool()
    private var timer: Timer!
    private var retried = false
    private var status = 0
    private var reason: [UInt8] = []
    private var headers: [UInt8] = []
    private var contentType: String?
    private var retryAfter: Int?
    /// The request went out whole (the connection may then be pooled).
    private var requestWritten = false

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
        timer = Timer(loop: jobs.loop) { [unowned self] in self.timedOut() }
    }

    /// Starts the exchange; the caller has acquired an upstream slot for it.
    func start() {
        guard state == .idle else { return }
        jobs.engine.exchangeStarted()
        timer.schedule(after: target.config.timeout)
        if let pooled = jobs.proxy.pool(for: target)?.take() {
            state = .exchanging
            upstream = pooled
            pooled.beginExchange(delegate: self, isHead: isHead)
            send()
        } else {
            connectFresh()
        }
    }

    /// Stops at once (DELETE of a running job, or the client of an `auto`
    /// request left): the upstream sees the connection close.
    func abort() {
        guard state != .ended && state != .idle else { return }
        upstream?.close()
        upstream = nil
        capture.discard()
        finished = nil
        end()
    }

    private func connectFresh() {
        state = .connecting
        let c = jobs.proxy.newUpstream(delegate: self, isHead: isHead)
        upstream = c
        c.connect(to: target.address, timeout: target.config.connectTimeout)
    }

    func clientConnected(_ connection: HTTPClientConnection) {
        send()
    }

    private func send() {
        guard let upstream, let out = upstream.output else {
            fail(.upstreamReset, "upstream connection closed before the request was sent", .unsent)
            return
        }
        state = .exchanging
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
            fail(.upstreamBadResponse, "the stored request body is missing")
            return
        }
        requestWritten = true
        upstream.writeNow()
    }

    func clientOutputDrained(_ connection: HTTPClientConnection) {}

    // MARK: Response

    func clientResponseHead(_ connection: HTTPClientConnection, response: MessageReader) {
        if response.framing == .untilClose && response.versionMinor != 0 {
            fail(.upstreamBadResponse, "HTTP/1.1 response without Content-Length or chunked framing")
            return
        }
        status = response.status
        reason = Array(response.reason)
        let w = jobs.proxy.scratchWriter
        w.reset()
        ResponseSerializer.writeHeaders(of: response, into: w)
        headers = Array(w.bytes)
        contentType = response.first(.contentType).map { String(decoding: response.value($0), as: UTF8.self) }
        retryAfter = response.first(named: "retry-after").flatMap { retryAfterSeconds(response.value($0), nowMillis: wallClockMillis()) }
    }

    func clientResponseBody(_ connection: HTTPClientConnection, buffer: OpaquePointer) {
        do {
            try capture.append(buffer, limit: maxBody, spoolPath: jobs.engine.spoolPath(id, "res"))
        } catch .tooLarge {
            fail(.responseTooLarge, "upstream response exceeds jobs.max_result_body (\(maxBody) bytes)")
        } catch {
            fail(.upstreamBadResponse, "cannot spool the response: \(error)")
        }
    }

    func clientResponseEnd(_ connection: HTTPClientConnection) {
        jobs.proxy.checkIn(connection, to: target, requestWritten: requestWritten)
        upstream = nil
        let body: StoredBody
        do {
            body = try capture.finish()
        } catch {
            fail(.upstreamBadResponse, "cannot spool the response: \(error)")
            return
        }
        let response = JobResponse(status: status, reason: reason, headers: headers, body: body)
        let done = finished
        finished = nil
        end()
        done?(.response(response, contentType: contentType, retryAfter: retryAfter))
    }

    func clientFailed(_ connection: HTTPClientConnection, failure: ClientFailure) {
        upstream = nil
        // A pooled connection the upstream closed as we reused it: one more
        // try on a new connection, if the request is safe to send twice.
        if failure == .reset && connection.completedExchanges > 0 && !retried && resendable {
            retried = true
            capture.discard()
            connectFresh()
            return
        }
        switch failure {
        case .unreachable: fail(.upstreamUnreachable, "upstream refused or unreachable", .unsent)
        case .connectTimeout: fail(.upstreamTimeout, "upstream connect timed out", .unsent)
        case .reset: fail(.upstreamReset, "upstream closed the connection before responding", .sentNoResponse)
        case .badResponse: fail(.upstreamBadResponse, "upstream sent a malformed response")
        case .truncated: fail(.upstreamReset, "upstream response was truncated")
        }
    }

    private func timedOut() {
        guard state != .ended else { return }
        fail(.upstreamTimeout, "upstream did not answer within its timeout")
    }

    private func fail(_ code: JobErrorCode, _ message: String, _ retry: Retry = .no) {
        guard state != .ended else { return }
        upstream?.close()
        upstream = nil
        capture.discard()
        let done = finished
        finished = nil
        end()
        done?(.failure(code, message, retry))
    }

    private func end() {
        guard state != .ended else { return }
        let started = state != .idle
        state = .ended
        timer.cancel()
        target.gate.release()
        if started { jobs.engine.exchangeEnded() }
    }
}
