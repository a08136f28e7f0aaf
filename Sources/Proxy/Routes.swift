public import Config
import Meters
public import HTTP
import Loop

/// A route with its match data as bytes, so matching allocates nothing; a
/// class, so handing one to an exchange is a single retain.
public final class CompiledRoute: Sendable {
    public let pathPrefix: [UInt8]
    public let methods: [[UInt8]]
    public let host: [UInt8]?
    public let upstream: UpstreamTarget
    public let mode: RouteMode
    public let asyncAfter: Duration
    public let index: Int
    /// `name`, or `path_prefix` (SPEC §2).
    public let label: String
    /// `label`'s slot in the meter tables.
    public let meterSlot: Int

    init(pathPrefix: [UInt8], methods: [[UInt8]], host: [UInt8]?, upstream: UpstreamTarget, mode: RouteMode,
         asyncAfter: Duration, index: Int, label: String) {
        self.label = label
        self.meterSlot = MeterLabels.slot(route: label)
        self.pathPrefix = pathPrefix
        self.methods = methods
        self.host = host
        self.upstream = upstream
        self.mode = mode
        self.asyncAfter = asyncAfter
        self.index = index
    }
}

extension RouteMode {
    /// The mode's place in `MeterLabels.modes`.
    public var meterIndex: Int {
        switch self {
        case .sync: return 0
        case .async: return 1
        case .auto: return 2
        }
    }
}

/// Routing (SPEC §2): the first route whose prefix, methods and host match.
extension RuntimeConfig {
    /// The first route matching the request, or nil (SPEC §2: in order).
    public func route(for request: MessageReader) -> CompiledRoute? {
        let path = request.path
        let method = request.methodName
        let host = request.hostValue
        for route in routes {
            if !pathMatches(path, route.pathPrefix) { continue }
            if !route.methods.isEmpty && !route.methods.contains(where: { bytesEqual(method, $0) }) { continue }
            if let want = route.host {
                guard let host, hostMatches(host, want) else { continue }
            }
            return route
        }
        return nil
    }

    /// True when the path is the job endpoint or below it.
    public func isJobPath(_ request: MessageReader) -> Bool {
        let path = request.path
        guard hasPrefix(path, jobsPath) else { return false }
        return path.count == jobsPath.count || path[jobsPath.count] == UInt8(ascii: "/") || path[jobsPath.count] == UInt8(ascii: "?")
    }
}

/// A path against a route's `path_prefix`. A target with no path, the
/// absolute-form `http://h` or `http://h?q` (its path is "/", RFC 9110
/// §4.2.3) and the asterisk-form of `OPTIONS *` (the server as a whole),
/// matches what "/" matches.
func pathMatches(_ path: UnsafeBufferPointer<UInt8>, _ prefix: [UInt8]) -> Bool {
    if path.first == UInt8(ascii: "/") { return hasPrefix(path, prefix) }
    return prefix.isEmpty || prefix == [UInt8(ascii: "/")]
}

/// Host field against a lower-case route host, ignoring the port.
func hostMatches(_ host: UnsafeBufferPointer<UInt8>, _ want: [UInt8]) -> Bool {
    var n = host.count
    if host.first == UInt8(ascii: "[") {
        // IP-literal: the name ends at "]".
        n = (host.firstIndex(of: UInt8(ascii: "]")) ?? n - 1) + 1
    } else if let colon = host.firstIndex(of: UInt8(ascii: ":")) {
        n = colon
    }
    return headerName(UnsafeBufferPointer(rebasing: host[0..<n]), equals: want)
}
