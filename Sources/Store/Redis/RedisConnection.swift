import CHiredis
public import Loop

#if canImport(Glibc)
import Glibc
#endif

/// Where a `RedisConnection` goes and how it identifies itself.
public struct RedisEndpoint: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var database: Int
    public var username: String?
    public var password: String?

    public init(host: String, port: Int, database: Int = 0, username: String? = nil, password: String? = nil) {
        self.host = host
        self.port = port
        self.database = database
        self.username = username
        self.password = password
    }
}

extension RedisEndpoint {
    /// `AUTH [USER] PASSWORD`, when the endpoint has a password.
    var auth: RedisCommand? {
        guard let password else { return nil }
        var c = RedisCommand("AUTH")
        if let username { c.append(username) }
        c.append(password)
        return c
    }
}

/// A new hiredis context connecting to `endpoint`, attached to `loop`'s
/// base, its `data` pointing at `owner` (unretained: the owner frees the
/// context before it goes), with the owner's connect and disconnect
/// trampolines; or why none could be made (a name that does not resolve).
func makeContext(_ endpoint: RedisEndpoint, loop: EventLoop, owner: UnsafeMutableRawPointer,
                 onConnect: @escaping @convention(c) (UnsafePointer<redisAsyncContext>?, Int32) -> Void,
                 onDisconnect: @escaping @convention(c) (UnsafePointer<redisAsyncContext>?, Int32) -> Void)
    -> Result<UnsafeMutablePointer<redisAsyncContext>, RedisUnavailable> {
    guard let context = redisAsyncConnect(endpoint.host, Int32(endpoint.port)) else {
        return .failure(RedisUnavailable("out of memory"))
    }
    if context.pointee.err != 0 {
        let reason = RedisConnection.errorText(context)
        redisAsyncFree(context)
        return .failure(RedisUnavailable(reason))
    }
    context.pointee.data = owner
    _ = CHiredis_attach(context, loop.base)
    redisAsyncSetConnectCallback(context, onConnect)
    redisAsyncSetDisconnectCallback(context, onDisconnect)
    return .success(context)
}

/// One hiredis asynchronous context on one loop, kept connected.
///
/// Commands are pipelined: each is written as it is sent and answered in
/// order. Every command has a deadline (`commandTimeout`); when the oldest
/// is missed, Redis is taken to be stuck (frozen, or the network gone): the
/// context is freed, every command in flight fails with `RedisUnavailable`,
/// and a new connection is tried. So a stopped Redis costs a bounded wait,
/// never a stuck loop or a caller that is not answered.
///
/// Reconnects by itself, 100 ms after a loss and doubling to 2 s while
/// Redis stays away. A new connection authenticates (`AUTH`), selects its
/// database and pings before it is ready; commands sent meanwhile wait
/// behind that handshake, and commands sent while no connection is being
/// made fail at once. `onChange` is told when it becomes ready and when it
/// is lost (with why: hiredis' error, or the missed deadline; never the
/// password).
///
/// Confined to its loop. The hiredis context is owned here and freed here
/// only; its C callbacks are trampolines that find this object through the
/// context's `data` (cleared before any free, so a late callback finds
/// nothing) and each command's reply box through its private pointer.
public final class RedisConnection {
    public enum Change: Sendable, Equatable {
        case ready
        case lost(String)
    }

    fileprivate enum Phase {
        /// Not started, or waiting to reconnect (the timer is armed).
        case idle
        /// TCP connect and handshake in flight.
        case connecting(UnsafeMutablePointer<redisAsyncContext>)
        case ready(UnsafeMutablePointer<redisAsyncContext>)
        case closed
    }

    public let loop: EventLoop
    public let endpoint: RedisEndpoint
    public let commandTimeout: Duration
    fileprivate var phase: Phase = .idle
    private let onChange: (Change) -> Void

    /// The deadlines of the commands in flight, oldest first (coarse
    /// monotonic nanoseconds): replies come in order, so the first is the
    /// one to watch.
    private var deadlines: [UInt64] = []
    private var oldest = 0
    private let deadlineTimer: Timer
    private let reconnectTimer: Timer
    private var retryDelay = RedisConnection.firstRetry
    /// Why the last connection ended, given to the commands it fails.
    private var lossReason = "not connected"

    static let firstRetry = Duration.milliseconds(100)
    static let lastRetry = Duration.seconds(2)

    public init(loop: EventLoop, endpoint: RedisEndpoint, commandTimeout: Duration = .seconds(2),
                onChange: @escaping (Change) -> Void = { _ in }) {
        self.loop = loop
        self.endpoint = endpoint
        self.commandTimeout = commandTimeout
        self.onChange = onChange
        deadlineTimer = Timer(loop: loop)
        reconnectTimer = Timer(loop: loop)
        deadlineTimer.setAction { [unowned self] in self.deadlineCheck() }
        reconnectTimer.setAction { [unowned self] in self.connect() }
    }

    deinit {
        // The owner closes first; if it did not, free without callbacks into us.
        if let context = phase.context {
            context.pointee.data = nil
            redisAsyncFree(context)
        }
    }

    public var isReady: Bool {
        if case .ready = phase { return true }
        return false
    }

    /// Commands sent and not yet answered.
    public var inFlight: Int { deadlines.count - oldest }

    /// Starts connecting (at once).
    public func start() {
        loop.preconditionInEventLoop()
        guard case .idle = phase else { return }
        connect()
    }

    /// Frees the connection; commands in flight fail. Nothing is tried again.
    public func close() {
        loop.preconditionInEventLoop()
        reconnectTimer.cancel()
        deadlineTimer.cancel()
        let context = phase.context
        phase = .closed
        lossReason = "closed"
        forgetDeadlines()
        if let context { redisAsyncFree(context) }
    }

    /// Sends `command`; `done` runs on this loop with the reply (an error
    /// reply is a value: the command was refused, the connection is fine)
    /// or `RedisUnavailable`, at once when no connection is being made.
    public func send(_ command: RedisCommand, _ done: @escaping (Result<RedisValue, RedisUnavailable>) -> Void) {
        send(command, decode: Self.value, done)
    }

    /// As `send`, with the reply read by `decode` where hiredis holds it
    /// (during the callback: nothing of it may be kept), so a reply read on
    /// every request is not copied into a `RedisValue` first.
    func send<T>(_ command: RedisCommand, decode: @escaping (UnsafePointer<redisReply>) -> T,
                 _ done: @escaping (Result<T, RedisUnavailable>) -> Void) {
        loop.preconditionInEventLoop()
        guard let context = phase.context else {
            done(.failure(RedisUnavailable(lossReason)))
            return
        }
        let box = Unmanaged.passRetained(DecodingReplyBox(decode: decode, done: done) as ReplyBox)
        let status = command.withEncoded { chars, length in
            redisAsyncFormattedCommand(context, { context, reply, privdata in
                let box = Unmanaged<ReplyBox>.fromOpaque(privdata!).takeRetainedValue()
                guard let owner = connection(of: context.map { UnsafePointer($0) }) else {
                    RedisConnection.orphaned(box)
                    return
                }
                owner.replied(context, reply?.assumingMemoryBound(to: redisReply.self), box: box)
            }, box.toOpaque(), chars, length)
        }
        guard status == REDIS_OK else {
            // hiredis refuses while it tears the context down.
            box.release()
            done(.failure(RedisUnavailable(lossReason)))
            return
        }
        watch(after: commandTimeout)
    }

    // MARK: Connecting

    private func connect() {
        guard case .idle = phase else { return }
        let made = makeContext(endpoint, loop: loop, owner: Unmanaged.passUnretained(self).toOpaque(), onConnect: { context, status in
            connection(of: context)?.connected(context!, status: status)
        }, onDisconnect: { context, status in
            connection(of: context)?.disconnected(context!, status: status)
        })
        guard case .success(let context) = made else {
            if case .failure(let e) = made { lost(nil, reason: e.reason) }
            return
        }
        phase = .connecting(context)

        var handshake: [RedisCommand] = endpoint.auth.map { [$0] } ?? []
        if endpoint.database != 0 {
            var select = RedisCommand("SELECT")
            select.append(endpoint.database)
            handshake.append(select)
        }
        handshake.append(RedisCommand("PING"))
        let last = handshake.count - 1
        for (i, command) in handshake.enumerated() {
            let name = command.name
            send(command) { [unowned self] result in
                self.handshakeReplied(context, name: name, result, last: i == last)
            }
        }
    }

    private func handshakeReplied(_ context: UnsafeMutablePointer<redisAsyncContext>, name: String,
                                  _ result: Result<RedisValue, RedisUnavailable>, last: Bool) {
        guard case .connecting(let current) = phase, current == context else { return }
        switch result {
        case .failure:
            break  // `lost` runs for the context itself
        case .success(.error(let message)):
            fail(context, reason: "\(name): \(message)")
        case .success:
            guard last else { return }
            phase = .ready(context)
            retryDelay = Self.firstRetry
            onChange(.ready)
        }
    }

    /// The TCP connect ended (hiredis frees the context itself when it failed).
    fileprivate func connected(_ context: UnsafePointer<redisAsyncContext>, status: Int32) {
        guard status != REDIS_OK else { return }
        lost(context, reason: Self.errorText(context))
    }

    /// hiredis dropped the connection (and frees the context after this).
    fileprivate func disconnected(_ context: UnsafePointer<redisAsyncContext>, status: Int32) {
        lost(context, reason: context.pointee.err != 0 ? Self.errorText(context) : "connection closed")
    }

    /// The connection on `context` is gone (nil: none was made): its
    /// commands are all failing, new ones fail at once, the owner is told,
    /// and a new connection is tried after a while.
    private func lost(_ context: UnsafePointer<redisAsyncContext>?, reason: String) {
        if let context {
            guard let current = phase.context, UnsafePointer(current) == context else { return }
        }
        guard !phase.isClosed else { return }
        phase = .idle
        lossReason = reason
        forgetDeadlines()
        reconnectTimer.schedule(after: retryDelay)
        retryDelay = min(retryDelay * 2, Self.lastRetry)
        onChange(.lost(reason))
    }

    /// Gives up on a live context ourselves: its commands fail with
    /// `reason` (through `replied`, before `redisAsyncFree` returns), and a
    /// new connection is tried.
    private func fail(_ context: UnsafeMutablePointer<redisAsyncContext>, reason: String) {
        lost(UnsafePointer(context), reason: reason)
        redisAsyncFree(context)
    }

    private func forgetDeadlines() {
        deadlines.removeAll(keepingCapacity: true)
        oldest = 0
        deadlineTimer.cancel()
    }

    // MARK: Replies and deadlines

    fileprivate func replied(_ context: UnsafeMutablePointer<redisAsyncContext>?,
                             _ reply: UnsafeMutablePointer<redisReply>?, box: ReplyBox) {
        guard let reply else {
            // hiredis is failing the context's commands (it frees it next):
            // the first of them ends the connection for everyone.
            if let context { lost(UnsafePointer(context), reason: Self.errorText(UnsafePointer(context))) }
            box.deliver(.failure(RedisUnavailable(lossReason)))
            return
        }
        if oldest < deadlines.count {
            oldest += 1
            if oldest == deadlines.count {
                deadlines.removeAll(keepingCapacity: true)
                oldest = 0
            } else if oldest >= 1024 && oldest * 2 >= deadlines.count {
                deadlines.removeFirst(oldest)
                oldest = 0
            }
        }
        box.deliver(.success(UnsafePointer(reply)))
    }

    /// A reply that comes with no connection object (the context was
    /// freed from under a late callback): only its caller hears of it.
    fileprivate static func orphaned(_ box: ReplyBox) {
        box.deliver(.failure(RedisUnavailable("connection closed")))
    }

    private func watch(after timeout: Duration) {
        let deadline = coarseNanos() &+ UInt64(timeout.nanoseconds)
        deadlines.append(deadline)
        if inFlight == 1 { deadlineTimer.schedule(after: timeout) }
    }

    private func deadlineCheck() {
        guard inFlight > 0, let context = phase.context else { return }
        let now = coarseNanos()
        let first = deadlines[oldest]
        if first <= now {
            fail(context, reason: "no answer within \(commandTimeout)")
        } else {
            deadlineTimer.schedule(after: .nanoseconds(Int64(first - now)))
        }
    }

    private func coarseNanos() -> UInt64 { monotonicNanos() }

    static func errorText(_ context: UnsafePointer<redisAsyncContext>) -> String {
        guard let text = context.pointee.errstr else { return "error \(context.pointee.err)" }
        let s = String(cString: text)
        return s.isEmpty ? "error \(context.pointee.err)" : s
    }

    static func value(_ r: UnsafePointer<redisReply>) -> RedisValue {
        let reply = r.pointee
        func text() -> String {
            String(decoding: UnsafeRawBufferPointer(start: reply.str, count: reply.len), as: UTF8.self)
        }
        switch reply.type {
        case REDIS_REPLY_STRING:
            return .bulk([UInt8](UnsafeRawBufferPointer(start: reply.str, count: reply.len)))
        case REDIS_REPLY_STATUS: return .status(text())
        case REDIS_REPLY_ERROR: return .error(text())
        case REDIS_REPLY_INTEGER: return .integer(reply.integer)
        case REDIS_REPLY_ARRAY:
            var items: [RedisValue] = []
            items.reserveCapacity(reply.elements)
            for i in 0..<reply.elements {
                if let e = reply.element[i] { items.append(value(e)) } else { items.append(.null) }
            }
            return .array(items)
        default:
            return .null
        }
    }
}

extension RedisConnection.Phase {
    var context: UnsafeMutablePointer<redisAsyncContext>? {
        switch self {
        case .connecting(let c), .ready(let c): return c
        case .idle, .closed: return nil
        }
    }

    var isClosed: Bool {
        if case .closed = self { return true }
        return false
    }
}

/// A command's continuation, retained from its send to its reply (what
/// the C callback gets back); the reply is decoded into `T` while hiredis
/// still holds it. One allocation per command.
class ReplyBox {
    func deliver(_ reply: Result<UnsafePointer<redisReply>, RedisUnavailable>) {}
}

final class DecodingReplyBox<T>: ReplyBox {
    let decode: (UnsafePointer<redisReply>) -> T
    let done: (Result<T, RedisUnavailable>) -> Void

    init(decode: @escaping (UnsafePointer<redisReply>) -> T, done: @escaping (Result<T, RedisUnavailable>) -> Void) {
        self.decode = decode
        self.done = done
    }

    override func deliver(_ reply: Result<UnsafePointer<redisReply>, RedisUnavailable>) { done(reply.map(decode)) }
}

private func connection(of context: UnsafePointer<redisAsyncContext>?) -> RedisConnection? {
    guard let data = context?.pointee.data else { return nil }
    return Unmanaged<RedisConnection>.fromOpaque(data).takeUnretainedValue()
}
