import Config
public import HTTP
public import Logging
public import Loop
public import Meters

/// The proxy on one event loop: its listener, its upstream pools, its
/// access log, and the configuration it currently routes by.
public final class ProxyLoop: HTTPService {
    public let loop: EventLoop
    public private(set) var config: RuntimeConfig
    public private(set) var server: HTTPServer!
    /// Reused for heads built on this loop (upstream requests, captures).
    public let scratchWriter = ByteWriter(capacity: 4096)
    /// The job layer: async and auto routes and the job endpoint go there.
    public var jobs: (any JobService)?
    public let log: Logger
    let maxResponseHeadBytes = 64 * 1024
    private var pools: [ObjectIdentifier: UpstreamPool] = [:]
    /// The pool found last: most loops talk to one upstream most of the
    /// time. `pools` holds it: borrowed here, not counted per use.
    private var lastPool: Unmanaged<UpstreamPool>?
    private var poolSweeper: Timer?
    private var draining = false
    private var accessLog: AccessLog?
    /// This loop's counts for `/metrics`: written only here, read by scrapes.
    public let meterTable = MeterTable(capacity: 8192)
    /// `metrics` is on: requests and exchanges are counted in `meterTable`.
    public private(set) var metering = false
    /// `meterTable` while `metrics` is on; nil when off.
    public var meters: MeterTable? { metering ? meterTable : nil }
    /// `MeterBuckets.latency`, held here: read without a global's once-check.
    public let latencyBuckets = MeterBuckets.latency
    public let answered = AnsweredHandler()
    /// Finished exchanges kept for reuse: their buffers and timer are made once.
    private var exchangePool: [ProxyExchange] = []

    func recycle(_ exchange: ProxyExchange) {
        if exchangePool.count < 1024 { exchangePool.append(exchange) }
    }

    public init(loop: EventLoop, config: RuntimeConfig, budget: ConnectionBudget, logger: Logger) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.config = config
        self.log = logger
        self.server = nil
        self.server = HTTPServer(loop: loop, service: self, limits: config.serverLimits, budget: budget)
        applyLogging()
        poolSweeper = Timer(loop: loop) { [unowned self] in self.sweepPools() }
        schedulePoolSweep()
    }

    /// Idle upstream connections live for `limits.idle_timeout`, as idle
    /// client connections do: swept every quarter of it, closed after four
    /// sweeps idle.
    private static let poolSweepsPerIdleTimeout: UInt64 = 4

    private func schedulePoolSweep() {
        let interval = config.configuration.limits.idleTimeout / Int(Self.poolSweepsPerIdleTimeout)
        poolSweeper?.schedule(after: max(interval, .milliseconds(10)))
    }

    private func sweepPools() {
        for pool in pools.values { pool.sweep(maxAge: Self.poolSweepsPerIdleTimeout) }
        if !draining { schedulePoolSweep() }
    }

    public func listen(host: String, port: Int, reusePort: Bool) throws(SocketError) -> Int {
        try server.listen(host: host, port: port, reusePort: reusePort)
    }

    /// Swaps in a reloaded configuration; exchanges in flight finish on the old one.
    public func apply(_ newConfig: RuntimeConfig) {
        loop.preconditionInEventLoop()
        config = newConfig
        server.limits = newConfig.serverLimits
        // Pools belong to the old targets; their idle connections are closed.
        for pool in pools.values { pool.closeAll() }
        pools.removeAll()
        lastPool = nil
        applyLogging()
    }

    private func applyLogging() {
        if config.configuration.accessLog {
            if accessLog == nil { accessLog = AccessLog(loop: loop) }
            accessLog?.jobsPath = config.jobsPath
        } else {
            accessLog?.flush()
            accessLog = nil
        }
        metering = config.configuration.metrics
        if accessLog == nil && !metering {
            server.onExchangeEnd = nil
        } else {
            // The server belongs to this proxy and ends with it: not counted
            // per call (an unowned reference would be, on every request).
            let me = Unmanaged.passUnretained(self)
            server.onExchangeEnd = { c in me._withUnsafeGuaranteedRef { $0.exchangeEnded(c) } }
        }
    }

    /// Counts and logs one answered request.
    private func exchangeEnded(_ c: HTTPServerConnection) {
        let now = monotonicNanos()
        if metering {
            meterTable.add(MeterKey(.httpRequests, slot: c.meterRoute, Int(c.reader.method), c.responseStatus))
            meterTable.observe(.httpDuration, slot: c.meterRoute, latencyBuckets, nanos: now &- c.requestStart)
        }
        accessLog?.record(c, status: c.responseStatus, now: now)
    }

    public func beginDrain() {
        draining = true
        poolSweeper?.cancel()
        server.beginDrain()
        for pool in pools.values { pool.closeAll() }
        pools.removeAll()
        lastPool = nil
    }

    public var openConnections: Int { server.openConnections }

    /// Names the job in the exchange's access log line (its first 8
    /// characters); nothing to do when access logging is off.
    public func logJob(_ prefix: @autoclosure () -> String, on client: HTTPServerConnection) {
        if accessLog != nil { client.logJob = prefix() }
    }

    public func flushLogs() { accessLog?.flush() }

    /// A new upstream connection, its first exchange begun for `delegate`;
    /// the caller keeps it, then calls `connect(to:)`, which may fail at once
    /// (and tell the delegate so).
    public func newUpstream(delegate: any HTTPClientDelegate, isHead: Bool) -> HTTPClientConnection {
        let c = HTTPClientConnection(loop: loop, maxHeaderBytes: maxResponseHeadBytes)
        c.beginExchange(delegate: delegate, isHead: isHead)
        return c
    }

    /// The pool of one of the current configuration's upstreams. A target
    /// a reload replaced has none (nor has any once draining began): the
    /// connections of exchanges that outlive it are closed, not kept.
    public func pool(for target: UpstreamTarget) -> UpstreamPool? {
        if let last = lastPool, last._withUnsafeGuaranteedRef({ $0.target === target }) {
            return last.takeUnretainedValue()
        }
        let key = ObjectIdentifier(target)
        if let pool = pools[key] {
            lastPool = Unmanaged.passUnretained(pool)
            return pool
        }
        guard !draining, target.isStandalone || config.upstream(named: target.name) === target else { return nil }
        let pool = UpstreamPool(loop: loop, target: target)
        pools[key] = pool
        lastPool = Unmanaged.passUnretained(pool)
        return pool
    }

    /// An idle pooled connection to `target`, or nil when a new one must be made.
    public func takeIdleConnection(for target: UpstreamTarget) -> HTTPClientConnection? {
        withPool(for: target) { $0?.take() }
    }

    /// `pool(for:)` for one call: the last pool is lent, not counted.
    @inline(__always)
    private func withPool<R>(for target: UpstreamTarget, _ body: (UpstreamPool?) -> R) -> R {
        if let last = lastPool, last._withUnsafeGuaranteedRef({ $0.target === target }) {
            return last._withUnsafeGuaranteedRef { body($0) }
        }
        return body(pool(for: target))
    }

    /// An exchange's connection after a whole response: kept in its pool,
    /// or closed.
    public func checkIn(_ connection: HTTPClientConnection, to target: UpstreamTarget, requestWritten: Bool) {
        withPool(for: target) { pool in
            if let pool {
                pool.checkIn(connection, requestWritten: requestWritten)
            } else {
                connection.close()
            }
        }
    }

    // MARK: HTTPService

    public func handler(for request: MessageReader, on connection: HTTPServerConnection) -> any RequestHandler {
        if config.isJobPath(request) {
            connection.meterRoute = config.jobsMeterSlot
            // The job path is never forwarded (SPEC §2).
            guard let jobs else { return refuse(.jobNotFound, on: connection) }
            return jobs.jobEndpoint(for: request, on: connection)
        }
        guard let route = config.route(for: request) else {
            return refuse(.noRoute, on: connection)
        }
        connection.meterRoute = route.meterSlot
        if route.mode != .sync {
            guard let jobs else { return refuse(.storeUnavailable, on: connection) }
            return jobs.handler(for: request, route: route, on: connection)
        }
        // A webhook needs a job: on a sync route it is refused, not forwarded (SPEC §4).
        if request.callbackURLCount != 0 { return refuse(.callbackNotAllowed, on: connection) }
        let exchange = exchangePool.popLast() ?? ProxyExchange(proxy: self)
        exchange.begin(client: connection, request: request, route: route)
        return exchange
    }
}

extension ProxyLoop {
    /// Answers `error` and returns the handler that drops the request's body.
    public func refuse(_ error: HTTPError, on connection: HTTPServerConnection) -> any RequestHandler {
        connection.respondError(error)
        return answered
    }
}

/// The handler of a request the proxy answered itself: any body is dropped.
public final class AnsweredHandler: RequestHandler {
    public func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {}
    public func requestEnd(connection: HTTPServerConnection) {}
    public func connectionClosed(connection: HTTPServerConnection) {}
}
