public import HTTP

/// What the proxy hands to the job layer above it (`Jobs`), which registers
/// one per loop: requests on `async` and `auto` routes, and every request
/// for the job endpoint. The proxy itself knows nothing of jobs.
public protocol JobService: AnyObject {
    /// A request on a route whose mode is `async` or `auto` (SPEC §3).
    func handler(for request: MessageReader, route: CompiledRoute, on connection: HTTPServerConnection) -> any RequestHandler
    /// A request at or below `jobs.path` (SPEC §4), which is never forwarded.
    func jobEndpoint(for request: MessageReader, on connection: HTTPServerConnection) -> any RequestHandler
}
