public import HTTP
public import Loop
public import Meters

/// The admin listener's endpoints (SPEC §7): `/healthz` answers while the
/// loops run; `/readyz` when the store answers and the proxy is not
/// draining; `/metrics` the Prometheus page, when metrics are on.
public final class AdminService: HTTPService {
    public let isReady: () -> Bool
    public let metrics: MetricsBook?
    public private(set) var server: HTTPServer!
    private let answered = AdminAnswered()

    public init(loop: EventLoop, metrics: MetricsBook? = nil, isReady: @escaping () -> Bool) {
        self.isReady = isReady
        self.metrics = metrics
        self.server = HTTPServer(loop: loop, service: self, limits: HTTPServerLimits(), budget: ConnectionBudget(limit: 256))
    }

    public func handler(for request: MessageReader, on connection: HTTPServerConnection) -> any RequestHandler {
        let path = request.path
        let get = request.methodName.elementsEqual("GET".utf8) || request.isHead
        if get && path.elementsEqual("/healthz".utf8) {
            reply(connection, 200, "{\"status\":\"ok\"}")
        } else if get && path.elementsEqual("/readyz".utf8) {
            if isReady() {
                reply(connection, 200, "{\"status\":\"ready\"}")
            } else {
                reply(connection, 503, "{\"status\":\"not_ready\"}")
            }
        } else if get && path.elementsEqual("/metrics".utf8), let metrics {
            let page = metrics.render()
            page.withUnsafeBufferPointer { body in
                connection.respond(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: body) { w in
                    w.header("Cache-Control", "no-store")
                }
            }
        } else if get && path.elementsEqual("/openapi.yaml".utf8) {
            replyOpenAPI(connection)
        } else {
            connection.respondError(.adminNotFound)
        }
        return answered
    }

    private func reply(_ c: HTTPServerConnection, _ status: Int, _ body: StaticString) {
        c.respond(status: status, contentType: "application/json",
                  body: UnsafeBufferPointer(start: body.utf8Start, count: body.utf8CodeUnitCount)) { w in
            w.header("Cache-Control", "no-store")
        }
    }

    /// The job API's OpenAPI document, built into the binary (Scripts/gen-openapi).
    /// `application/yaml` is YAML's registered media type (RFC 9512).
    private func replyOpenAPI(_ c: HTTPServerConnection) {
        let document = OpenAPIDocument.yaml
        c.respond(status: 200, contentType: "application/yaml",
                  body: UnsafeBufferPointer(start: document.utf8Start, count: document.utf8CodeUnitCount))
    }
}

final class AdminAnswered: RequestHandler {
    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {}
    func requestEnd(connection: HTTPServerConnection) {}
    func connectionClosed(connection: HTTPServerConnection) {}
}
