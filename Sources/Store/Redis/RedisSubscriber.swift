import CHiredis
public import Loop

/// A hiredis context in subscribe mode on one loop: one channel, every
/// message handed to `onMessage`, re-subscribed after every reconnect.
///
/// Messages are wake-ups, never the truth (DESIGN.md "Redis"): one lost
/// while the connection was down costs latency only, so after every
/// (re)subscription the owner is told `.ready` and looks at Redis itself.
/// hiredis 0.14 drops the answer to a PING in subscribe mode, so this
/// connection cannot see a frozen Redis by itself: the owner, whose command
/// connection has deadlines, calls `reset()` when that one is lost.
///
/// Confined to its loop; owns its context, freed only here. The C callback
/// is a trampoline that finds this object through the context's `data`
/// (the subscription's private pointer is this object too, unretained: the
/// subscription lives as long as the context, which never outlives us).
public final class RedisSubscriber {
    public typealias Change = RedisConnection.Change

    private enum Phase {
        case idle
        case subscribing(UnsafeMutablePointer<redisAsyncContext>)
        case ready(UnsafeMutablePointer<redisAsyncContext>)
        case closed

        var context: UnsafeMutablePointer<redisAsyncContext>? {
            switch self {
            case .subscribing(let c), .ready(let c): return c
            case .idle, .closed: return nil
            }
        }
    }

    public let loop: EventLoop
    public let endpoint: RedisEndpoint
    public let channel: String
    private var phase: Phase = .idle
    private let onMessage: ([UInt8]) -> Void
    private let onChange: (Change) -> Void
    private let reconnectTimer: Timer
    private var retryDelay = RedisConnection.firstRetry

    public init(loop: EventLoop, endpoint: RedisEndpoint, channel: String,
                onChange: @escaping (Change) -> Void = { _ in }, onMessage: @escaping ([UInt8]) -> Void) {
        self.loop = loop
        self.endpoint = endpoint
        self.channel = channel
        self.onMessage = onMessage
        self.onChange = onChange
        reconnectTimer = Timer(loop: loop)
        reconnectTimer.setAction { [unowned self] in self.connect() }
    }

    deinit {
        if let context = phase.context {
            context.pointee.data = nil
            redisAsyncFree(context)
        }
    }

    public var isReady: Bool {
        if case .ready = phase { return true }
        return false
    }

    public func start() {
        loop.preconditionInEventLoop()
        if case .idle = phase { connect() }
    }

    /// Drops the connection and makes a new one (the owner saw Redis stuck).
    public func reset() {
        loop.preconditionInEventLoop()
        guard let context = phase.context else { return }
        lost(context, reason: "reset")
        context.pointee.data = nil
        redisAsyncFree(context)
    }

    public func close() {
        loop.preconditionInEventLoop()
        reconnectTimer.cancel()
        let context = phase.context
        phase = .closed
        if let context {
            context.pointee.data = nil
            redisAsyncFree(context)
        }
    }

    private func connect() {
        guard case .idle = phase else { return }
        let made = makeContext(endpoint, loop: loop, owner: Unmanaged.passUnretained(self).toOpaque(), onConnect: { context, status in
            guard status != REDIS_OK, let me = subscriber(of: context) else { return }
            me.lost(UnsafeMutablePointer(mutating: context!), reason: RedisConnection.errorText(context!))
        }, onDisconnect: { context, _ in
            guard let me = subscriber(of: context) else { return }
            let reason = context!.pointee.err != 0 ? RedisConnection.errorText(context!) : "connection closed"
            me.lost(UnsafeMutablePointer(mutating: context!), reason: reason)
        })
        guard case .success(let context) = made else {
            if case .failure(let e) = made { lost(nil, reason: e.reason) }
            return
        }
        phase = .subscribing(context)
        var commands: [RedisCommand] = endpoint.auth.map { [$0] } ?? []
        var subscribe = RedisCommand("SUBSCRIBE")
        subscribe.append(channel)
        commands.append(subscribe)
        let me = Unmanaged.passUnretained(self).toOpaque()
        for command in commands {
            _ = command.withEncoded { chars, length in
                redisAsyncFormattedCommand(context, { context, reply, _ in
                    guard let me = subscriber(of: context.map { UnsafePointer($0) }) else { return }
                    me.received(context!, reply?.assumingMemoryBound(to: redisReply.self))
                }, me, chars, length)
            }
        }
    }

    private func received(_ context: UnsafeMutablePointer<redisAsyncContext>, _ reply: UnsafeMutablePointer<redisReply>?) {
        guard let current = phase.context, current == context else { return }
        guard let reply else {
            lost(context, reason: RedisConnection.errorText(UnsafePointer(context)))
            return
        }
        switch RedisConnection.value(UnsafePointer(reply)) {
        case .array(let items) where items.count == 3 && items[0].string == "message":
            if let payload = items[2].bytes { onMessage(payload) }
        case .array(let items) where items.count == 3 && items[0].string == "subscribe":
            phase = .ready(context)
            retryDelay = RedisConnection.firstRetry
            onChange(.ready)
        case .error(let message):
            // AUTH refused: say why (never with the password), try again later.
            lost(context, reason: message)
            context.pointee.data = nil
            redisAsyncFree(context)
        default:
            break  // AUTH's +OK
        }
    }

    private func lost(_ context: UnsafeMutablePointer<redisAsyncContext>?, reason: String) {
        if let context {
            guard let current = phase.context, current == context else { return }
        }
        if case .closed = phase { return }
        phase = .idle
        reconnectTimer.schedule(after: retryDelay)
        retryDelay = min(retryDelay * 2, RedisConnection.lastRetry)
        onChange(.lost(reason))
    }
}

private func subscriber(of context: UnsafePointer<redisAsyncContext>?) -> RedisSubscriber? {
    guard let data = context?.pointee.data else { return nil }
    return Unmanaged<RedisSubscriber>.fromOpaque(data).takeUnretainedValue()
}
