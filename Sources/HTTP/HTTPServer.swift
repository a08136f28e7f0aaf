import CLibevent
public import Loop
public import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Server-side limits and timers of SPEC §2 `limits:`.
public struct HTTPServerLimits: Sendable {
    public var maxHeaderBytes: Int = 16 * 1024
    public var maxRequestBody: Int64 = 8 * 1024 * 1024
    public var headerTimeout: Duration = .seconds(10)
    public var bodyTimeout: Duration = .seconds(60)
    public var idleTimeout: Duration = .seconds(60)

    public init() {}
}

/// What a server answers with: one handler per request.
public protocol HTTPService: AnyObject {
    /// Called with a complete, validated request head. The handler answers
    /// through `connection`'s response calls, now or later.
    func handler(for request: MessageReader, on connection: HTTPServerConnection) -> any RequestHandler
}

/// The per-request side of an `HTTPService`. All calls come on the
/// connection's loop; after `connectionClosed` none follow.
public protocol RequestHandler: AnyObject {
    /// Decoded request body bytes are in `buffer`: take all of them.
    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection)
    /// The request body is complete (also called at once when there is none).
    func requestEnd(connection: HTTPServerConnection)
    /// The client's output fell below the low-water mark after it was congested.
    func outputDrained(connection: HTTPServerConnection)
    /// The connection closed before the exchange finished.
    func connectionClosed(connection: HTTPServerConnection)
    /// The connection dropped its reference to this handler; called exactly
    /// once per request, last.
    func detached(from connection: HTTPServerConnection)
}

extension RequestHandler {
    public func outputDrained(connection: HTTPServerConnection) {}
    public func detached(from connection: HTTPServerConnection) {}
}

/// A process-wide count of open client connections, for `max_connections`.
public final class ConnectionBudget: Sendable {
    public let limit: Atomic<Int>
    private let open = Atomic<Int>(0)

    public init(limit: Int) { self.limit = Atomic(limit) }

    public func tryOpen() -> Bool {
        let now = open.wrappingAdd(1, ordering: .relaxed).newValue
        if now > limit.load(ordering: .relaxed) {
            open.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    public func close() { open.wrappingSubtract(1, ordering: .relaxed) }
    public var current: Int { open.load(ordering: .relaxed) }
}

/// One listening socket and the connections it accepted, on one loop.
public final class HTTPServer {
    public let loop: EventLoop
    public var service: any HTTPService
    public var limits: HTTPServerLimits
    public let budget: ConnectionBudget
    /// Set by the owner to write the access log: called once per answered request.
    public var onExchangeEnd: ((HTTPServerConnection) -> Void)?

    private var listener: OpaquePointer?
    private(set) var connections: [ObjectIdentifier: HTTPServerConnection] = [:]
    public private(set) var draining = false

    public init(loop: EventLoop, service: any HTTPService, limits: HTTPServerLimits, budget: ConnectionBudget) {
        self.loop = loop
        self.service = service
        self.limits = limits
        self.budget = budget
    }

    deinit {
        if let listener { evconnlistener_free(listener) }
    }

    /// Binds and listens; returns the bound port (useful with port 0).
    /// `reusePort` lets one listener per loop share the address.
    public func listen(host: String, port: Int, reusePort: Bool) throws(SocketError) -> Int {
        var storage = try SocketAddress.resolve(host: host, port: port)
        var flags = UInt32(LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC)
        if reusePort { flags |= UInt32(LEV_OPT_REUSEABLE_PORT) }
        let ctx = Unmanaged.passUnretained(self).toOpaque()
        let made = storage.withSockaddr { addr, len in
            evconnlistener_new_bind(loop.base, { _, fd, addr, _, ctx in
                Unmanaged<HTTPServer>.fromOpaque(ctx!).takeUnretainedValue().accept(fd: fd, address: addr!)
            }, ctx, flags, 1024, addr, len)
        }
        guard let made else { throw SocketError(message: "cannot listen on \(host):\(port): \(String(cString: strerror(errno)))") }
        listener = made
        return SocketAddress.localPort(of: evconnlistener_get_fd(made))
    }

    /// Stops accepting; open connections finish their current exchange and close.
    public func beginDrain() {
        draining = true
        if let listener {
            evconnlistener_free(listener)
            self.listener = nil
        }
        for connection in connections.values {
            connection.drain()
        }
    }

    /// Connections still open on this loop.
    public var openConnections: Int { connections.count }

    private func accept(fd: Int32, address: UnsafeMutablePointer<sockaddr>) {
        guard !draining, budget.tryOpen() else {
            // Over max_connections: refuse this one, serve the others.
            close(fd)
            return
        }
        let peer = SocketAddress.ipBytes(address)
        let connection = HTTPServerConnection(server: self, fd: fd, peer: peer)
        connections[ObjectIdentifier(connection)] = connection
        connection.start()
    }

    func connectionDidClose(_ connection: HTTPServerConnection) {
        connections.removeValue(forKey: ObjectIdentifier(connection))
        budget.close()
    }
}

public struct SocketError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(message: String) { self.message = message }
    public var description: String { message }
}

/// Address helpers over `getaddrinfo` and `inet_ntop`.
public enum SocketAddress {
    /// Resolves once, at configuration time (nginx does the same for
    /// `proxy_pass` hosts); the result is a plain sockaddr.
    public static func resolve(host: String, port: Int) throws(SocketError) -> ResolvedAddress {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var result: UnsafeMutablePointer<addrinfo>?
        let h = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
        let rc = getaddrinfo(h.isEmpty ? nil : h, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw SocketError(message: "cannot resolve \(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(result) }
        var out = ResolvedAddress()
        withUnsafeMutableBytes(of: &out.storage) { dst in
            dst.copyMemory(from: UnsafeRawBufferPointer(start: first.pointee.ai_addr, count: Int(first.pointee.ai_addrlen)))
        }
        out.length = first.pointee.ai_addrlen
        return out
    }

    public static func localPort(of fd: Int32) -> Int {
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        let family = storage.ss_family
        return withUnsafePointer(to: &storage) { p -> Int in
            if family == sa_family_t(AF_INET6) {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
        }
    }

    /// The textual IP of a peer address, as bytes for X-Forwarded-For.
    static func ipBytes(_ address: UnsafeMutablePointer<sockaddr>) -> [UInt8] {
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        if address.pointee.sa_family == sa_family_t(AF_INET6) {
            address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a in
                _ = inet_ntop(AF_INET6, &a.pointee.sin6_addr, &text, socklen_t(text.count))
            }
        } else {
            address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a in
                _ = inet_ntop(AF_INET, &a.pointee.sin_addr, &text, socklen_t(text.count))
            }
        }
        return text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    }
}

/// A resolved socket address (IPv4 or IPv6), opaque above HTTP.
public struct ResolvedAddress: Sendable {
    var storage = sockaddr_storage()
    var length: socklen_t = 0

    public init() {}

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, Int32) -> R) -> R {
        let len = Int32(length)
        return withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, len) }
        }
    }
}

