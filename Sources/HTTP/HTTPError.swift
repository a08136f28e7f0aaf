/// An error the proxy answers itself: a status, a stable machine code and a
/// short human message, rendered as SPEC §6's JSON.
public struct HTTPError: Error, Sendable, Equatable {
    public var status: Int
    public var code: StaticString
    public var message: StaticString

    public init(_ status: Int, _ code: StaticString, _ message: StaticString) {
        self.status = status
        self.code = code
        self.message = message
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
    public static let versionNotSupported = HTTPError(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are supported")
    public static let expectationFailed = HTTPError(417, "expectation_failed", "only Expect: 100-continue is supported")
    public static let headersTooLarge = HTTPError(431, "request_header_fields_too_large", "request head exceeds max_header_bytes")
    public static let targetTooLong = HTTPError(414, "uri_too_long", "request target too long")
    public static let bodyTooLarge = HTTPError(413, "content_too_large", "request body exceeds max_request_body")
    public static let headerTimeout = HTTPError(408, "request_timeout", "request head not received within header_timeout")
    public static let bodyTimeout = HTTPError(408, "request_timeout", "request body not received within body_timeout")

    // Upstream faults (SPEC §6).
    public static let badResponse = HTTPError(502, "upstream_bad_response", "upstream sent a malformed response")
}
