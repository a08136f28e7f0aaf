/// An error the proxy answers itself: a status, a stable machine code and a
/// short human message, rendered as SPEC §6's JSON.
public struct HTTPError: Error, Sendable, Equatable {
    public var status: Int
    public var code: StaticString
    public var message: StaticString
    /// Seconds for a `Retry-After` header; 0: none. For refusals a client
    /// should try again after (a full queue, an unavailable store).
    public var retryAfter: Int

    public init(_ status: Int, _ code: StaticString, _ message: StaticString, retryAfter: Int = 0) {
        self.status = status
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
    }

    /// SPEC §6: `{"error":{"code":"...","message":"..."}}`.
    public func writeJSON(into w: ByteWriter) {
        w.append("{\"error\":{\"code\":\"")
        w.appendJSONEscaped(code)
        w.append("\",\"message\":\"")
        w.appendJSONEscaped(message)
        w.append("\"}}")
    }

    public static func == (a: HTTPError, b: HTTPError) -> Bool {
        a.status == b.status && a.code.description == b.code.description
    }

    // Request-side refusals (SPEC §6).
    public static let badRequest = HTTPError(400, "bad_request", "malformed request")
    public static let badFraming = HTTPError(400, "bad_request", "ambiguous or malformed message framing")
    public static let badHeader = HTTPError(400, "bad_request", "invalid header field")
    public static let badHost = HTTPError(400, "bad_request", "missing, duplicate or invalid Host")
    public static let badTarget = HTTPError(400, "bad_request", "invalid request target")
    public static let obsFold = HTTPError(400, "bad_request", "obsolete line folding is not accepted")
    public static let badChunk = HTTPError(400, "bad_request", "malformed chunked body")
    public static let unsupportedEncoding = HTTPError(501, "not_implemented", "only the chunked transfer coding is supported")
    public static let methodNotAllowed = HTTPError(405, "method_not_allowed", "method not allowed by this proxy")
    public static let methodNotImplemented = HTTPError(501, "not_implemented", "method not implemented by this proxy")
    public static let versionNotSupported = HTTPError(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported")
    public static let expectationFailed = HTTPError(417, "expectation_failed", "only Expect: 100-continue is supported")
    public static let headersTooLarge = HTTPError(431, "request_header_fields_too_large", "request head exceeds max_header_bytes")
    public static let targetTooLong = HTTPError(414, "uri_too_long", "request target too long")
    public static let bodyTooLarge = HTTPError(413, "content_too_large", "request body exceeds max_request_body")
    public static let headerTimeout = HTTPError(408, "request_timeout", "request head not received within header_timeout")
    public static let bodyTimeout = HTTPError(408, "request_timeout", "request body not received within body_timeout")

    // Routing and the admin listener.
    public static let noRoute = HTTPError(404, "no_route", "no route matches this request")
    public static let adminNotFound = HTTPError(404, "not_found", "admin endpoints: /healthz /readyz /metrics /openapi.yaml")

    // Upstream faults (SPEC §6).
    public static let badResponse = HTTPError(502, "upstream_bad_response", "upstream sent a malformed response")
    public static let upstreamUnreachable = HTTPError(502, "upstream_unreachable", "upstream refused or unreachable")
    public static let upstreamConnectTimeout = HTTPError(504, "upstream_timeout", "upstream connect timed out")
    public static let upstreamReset = HTTPError(502, "upstream_reset", "upstream closed the connection before responding")
    public static let upstreamTruncated = HTTPError(502, "upstream_reset", "upstream response was truncated")
    public static let syncTimeout = HTTPError(504, "upstream_timeout", "upstream did not answer within sync_timeout")
    public static let upstreamTimeout = HTTPError(504, "upstream_timeout", "upstream did not answer in time")
    public static let responseTooLarge = HTTPError(502, "response_too_large", "upstream response exceeds jobs.max_result_body")
    public static let interrupted = HTTPError(502, "interrupted", "the exchange was interrupted")
    public static let upstreamQueueFull = HTTPError(
        503, "upstream_queue_full", "upstream is at max_concurrency and its queue is full", retryAfter: 1)

    // Jobs (SPEC §4). One 404 for every job a request may not see, so a
    // job's existence never leaks.
    public static let jobNotFound = HTTPError(404, "not_found", "no such job")
    public static let jobMethodNotAllowed = HTTPError(405, "method_not_allowed", "method not allowed on this job resource")
    public static let storeUnavailable = HTTPError(503, "store_unavailable", "the job store did not answer", retryAfter: 1)
    public static let storeReadFailed = HTTPError(500, "store_error", "the stored result could not be read")
    public static let spoolFailed = HTTPError(500, "spool_failed", "cannot store the request body")
    public static let idempotencyKeyMismatch = HTTPError(
        422, "idempotency_key_mismatch", "this Idempotency-Key was used for a different request")
    public static let idempotencyKeyInUse = HTTPError(
        409, "idempotency_key_in_use", "a request with this Idempotency-Key is being accepted")
    public static let callbackNotAllowed = HTTPError(400, "callback_not_allowed", "callbacks are not enabled on this route")
    public static let callbackNotRearmable = HTTPError(
        409, "callback_not_rearmable", "only the callback of a completed or failed job can be re-armed")
    public static let callbackURLRefused = HTTPError(
        400, "callback_not_allowed", "X-Callback-Url is malformed or not under an allowed prefix")
}
