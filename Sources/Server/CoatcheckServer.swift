public import Admin
public import Config
public import Dispatch
public import HTTP
public import Jobs
public import Store
public import Logging
public import Loop
public import Meters
public import Proxy
public import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The running process: loops, listeners, the admin endpoint, reload and
/// drain. Lifecycle: `initial` -> `running` (after `start`) -> `draining`
/// (SIGTERM/SIGINT or `beginShutdown`) -> `stopped`.
public final class CoatcheckServer: Sendable {
    public enum Phase: Sendable { case initial, running, draining, stopped }

    /// The proxy's loops (`threads` of them), then one more of its own for
    /// the webhook deliveries (DESIGN "Webhook deliveries"): signing, the
    /// receivers' handshakes and a burst of due deliveries (say, after a
    /// restart) take no time from a loop that proxies requests and runs jobs.
    public let group: EventLoopGroup
    public let logger: Logger
    public let jobs: JobEngine
    /// `/metrics`: every loop's, the job table's and the store's counts.
    public let metrics: MetricsBook
    /// The release this binary is (`coatcheck_build_info`).
    public static let version = "0.7.0"
    private let budget: ConnectionBudget
    private let state: Mutex<State>
    private let stopped = DispatchSemaphore(value: 0)
    /// Re-reads the configuration for SIGHUP; nil means reload is unavailable.
    private let reloadSource: (@Sendable () throws -> Configuration)?

    private struct State {
        var phase = Phase.initial
        var runtime: RuntimeConfig
        var proxies: [LoopBound<ProxyLoop>] = []
        var admin: LoopBound<AdminService>?
        var port = 0
        var adminPort: Int?
        var signals: LoopBound<SignalWatcher>?
        var sweeper: LoopBound<ExpirySweeper>?
        var jobLoops: [LoopBound<JobLoop>] = []
        /// The delivery loop's proxy (its exchanges' pools; no listener) and jobs.
        var delivery: (proxy: LoopBound<ProxyLoop>, jobs: LoopBound<JobLoop>)?

        /// Every loop's proxy and jobs, the delivery loop's last: what a
        /// reload or the shutdown reaches.
        var everyProxy: [LoopBound<ProxyLoop>] { proxies + (delivery.map { [$0.proxy] } ?? []) }
        var everyJobLoop: [LoopBound<JobLoop>] { jobLoops + (delivery.map { [$0.jobs] } ?? []) }
    }

    public init(configuration: Configuration, logger: Logger,
                reloadSource: (@Sendable () throws -> Configuration)? = nil) throws {
        let runtime: RuntimeConfig
        do {
            runtime = try RuntimeConfig(configuration)
        } catch {
            throw StartupError(message: error.message)
        }
        let group = EventLoopGroup(count: (configuration.threads ?? EventLoopGroup.coreCount) + 1)
        self.group = group
        do {
            if case .redis(let url) = configuration.store {
                let store = RedisJobStore(settings: sharedSettings(url, configuration), loops: group.loops, replica: replicaName())
                self.jobs = try JobEngine(shared: store, dir: configuration.jobs.dir)
            } else {
                self.jobs = try JobEngine(store: try openStore(configuration.store), dir: configuration.jobs.dir)
            }
        } catch {
            throw StartupError(message: "store \(configuration.store): \(error.message)")
        }
        self.logger = logger
        self.budget = ConnectionBudget(limit: configuration.limits.maxConnections)
        self.state = Mutex(State(runtime: runtime))
        self.reloadSource = reloadSource
        self.metrics = MetricsBook(version: Self.version, methodNames: MessageReader.methodNames)
        metrics.declare(Self.declaredCounters(runtime))
        metrics.register(jobs.table.meters)
        if let storeMeters = jobs.store.meters { metrics.register(storeMeters) }
        for table in jobs.shared?.meters ?? [] { metrics.register(table) }
    }

    /// The job and webhook counters a configuration can move, for
    /// `MetricsBook.declare`: created per job route and its mode; finished
    /// (per end status) and retries per upstream of a job route; deliveries
    /// per result on each route with callbacks.
    static func declaredCounters(_ runtime: RuntimeConfig) -> [MeterKey] {
        var keys: [MeterKey] = []
        var upstreams = Set<String>()
        for (route, spec) in zip(runtime.routes, runtime.configuration.routes) where route.mode != .sync {
            keys.append(MeterKey(.jobsCreated, slot: route.meterSlot, route.mode.meterIndex))
            upstreams.insert(route.upstream.name)
            if spec.callback != nil {
                for result in DeliveryResult.allCases {
                    keys.append(MeterKey(.webhookDeliveries, slot: route.meterSlot, result.rawValue))
                }
            }
        }
        for name in upstreams {
            let slot = MeterLabels.slot(upstream: name)
            for status in [JobStatus.completed, .failed, .canceled] {
                keys.append(MeterKey(.jobsFinished, slot: slot, status.ordinal))
            }
            keys.append(MeterKey(.jobRetries, slot: slot))
        }
        return keys
    }

    /// The gauges of SPEC §7, read when `/metrics` is scraped.
    private func readGauges(_ sink: inout GaugeSink, admin: ConnectionBudget?) {
        let runtime = state.withLock { $0.runtime }
        for target in runtime.upstreams {
            let labels = [("upstream", target.name)]
            sink.set(.upstreamInFlight, labels, Double(target.gate.current))
            sink.set(.upstreamQueueDepth, labels, Double(target.gate.queued))
            sink.set(.upstreamQueueOldest, labels, Double(target.gate.oldestWaitNanos) / 1e9)
        }
        if let shared = jobs.shared {
            // Redis: every replica's jobs, as last counted (every 2 s);
            // ended ones are not counted there (they only expire).
            if let c = shared.counts {
                sink.set(.jobs, [("state", JobStatus.queued.rawValue)], Double(c.queued))
                sink.set(.jobs, [("state", JobStatus.running.rawValue)], Double(c.running))
                sink.set(.webhookPending, [], Double(c.pendingCallbacks))
            }
        } else {
            let (byStatus, pending) = jobs.table.gauges()
            for (i, n) in byStatus.enumerated() where i < MeterLabels.jobStatuses.count {
                sink.set(.jobs, [("state", MeterLabels.jobStatuses[i])], Double(n))
            }
            sink.set(.webhookPending, [], Double(pending))
        }
        sink.set(.connections, [("listener", "proxy")], Double(budget.current))
        if let admin { sink.set(.connections, [("listener", "admin")], Double(admin.current)) }
    }

    public var port: Int { state.withLock { $0.port } }
    public var adminPort: Int? { state.withLock { $0.adminPort } }
    public var phase: Phase { state.withLock { $0.phase } }
    public var configuration: Configuration { state.withLock { $0.runtime.configuration } }

    /// Binds every listener and starts serving. Throws if an address is taken.
    public func start() throws {
        signal(SIGPIPE, SIG_IGN)
        group.start()
        let runtime = state.withLock { $0.runtime }
        let config = runtime.configuration
        let budget = self.budget
        let jobs = self.jobs
        let metrics = self.metrics
        let logger = self.logger
        // Jobs left by the previous run (SPEC §5): known before the first
        // request is accepted, dispatched once the loops exist.
        let recovered: [JobRecord]
        do {
            recovered = try jobs.recover(now: wallClockMillis())
        } catch {
            group.shutdown()
            throw StartupError(message: "store \(config.store): \(error.message)")
        }
        if !recovered.isEmpty {
            logger.info("recovered jobs", metadata: ["dispatching": "\(recovered.count)", "total": "\(jobs.table.count)"])
        }
        var port = config.listen.port
        var proxies: [LoopBound<ProxyLoop>] = []
        var jobLoops: [LoopBound<JobLoop>] = []
        var delivery: (proxy: LoopBound<ProxyLoop>, jobs: LoopBound<JobLoop>)!
        do {
            for loop in group.loops {
                let boundPort = port
                let (bound, jobLoop) = try loop.submitAndWait { () throws -> (LoopBound<ProxyLoop>, LoopBound<JobLoop>) in
                    let proxy = ProxyLoop(loop: loop, config: runtime, budget: budget, logger: logger)
                    metrics.register(proxy.meterTable)
                    let jobs = JobLoop(proxy: proxy, engine: jobs)
                    return (LoopBound(proxy, loop: loop), LoopBound(jobs, loop: loop))
                }
                if loop === group.loops.last {
                    delivery = (bound, jobLoop)
                    loop.execute { nameCurrentThread("delivery") }
                    break
                }
                proxies.append(bound)
                jobLoops.append(jobLoop)
                port = try loop.submitAndWait {
                    // One listener per loop on the same port (SO_REUSEPORT):
                    // the kernel spreads connections, none crosses threads.
                    try bound.value.listen(host: config.listen.host, port: boundPort, reusePort: true)
                }
            }
        } catch {
            group.shutdown()
            throw StartupError(message: "\(error)")
        }
        for (i, record) in recovered.enumerated() {
            let jobs = jobLoops[i % jobLoops.count]
            jobs.loop.execute { jobs.value.dispatch(record) }
        }
        if let shared = jobs.shared {
            let loops = jobLoops + [delivery.jobs]  // as the store's: one per loop of the group
            shared.start { i, change in
                switch change {
                case .ready: logger.info("redis connected", metadata: ["store": "\(config.store)", "loop": "\(i)"])
                case .lost(let reason):
                    logger.warning("redis connection lost", metadata: ["store": "\(config.store)", "loop": "\(i)", "reason": "\(reason)"])
                }
                loops[i].value.sharedConnectionChanged(change)
            }
            for jobLoop in jobLoops { jobLoop.loop.execute { jobLoop.value.startShared() } }
        }
        let deliveries = delivery.jobs
        deliveries.loop.execute { deliveries.value.startDeliveries() }
        let sweepLoop = group.loops[0]
        let sweeper = try? sweepLoop.submitAndWait { [self] in
            LoopBound(ExpirySweeper(loop: sweepLoop, server: self), loop: sweepLoop)
        }
        var adminPort: Int?
        var admin: LoopBound<AdminService>?
        if let adminListen = config.adminListen {
            let loop = group.loops[0]
            let book = config.metrics ? metrics : nil
            do {
                let (a, p, adminBudget) = try loop.submitAndWait { () throws -> (LoopBound<AdminService>, Int, ConnectionBudget) in
                    let service = AdminService(loop: loop, metrics: book) { [weak self] in self?.isReady ?? false }
                    let p = try service.server.listen(host: adminListen.host, port: adminListen.port, reusePort: false)
                    return (LoopBound(service, loop: loop), p, service.server.budget)
                }
                admin = a
                adminPort = p
                metrics.addGauges { [weak self] sink in self?.readGauges(&sink, admin: adminBudget) }
            } catch {
                group.shutdown()
                throw StartupError(message: "\(error)")
            }
        }
        let finalPort = port
        state.withLock {
            $0.proxies = proxies
            $0.port = finalPort
            $0.adminPort = adminPort
            $0.admin = admin
            $0.sweeper = sweeper
            $0.jobLoops = jobLoops
            $0.delivery = delivery
            $0.phase = .running
        }
        logger.info("coatcheck listening", metadata: [
            "listen": "\(config.listen.host):\(finalPort)",
            "admin": "\(adminPort.map { "\(config.adminListen!.host):\($0)" } ?? "off")",
            "threads": "\(proxies.count)",
            "routes": "\(config.routes.count)",
        ])
    }

    /// Ready when running, not draining, and the store answers.
    public var isReady: Bool { phase == .running && jobs.isHealthy }

    /// SIGTERM/SIGINT drain, SIGHUP reload; handled on loop 0 (signals reach one base only).
    public func installSignalHandlers() {
        let loop = group.loops[0]
        let watcher = try? loop.submitAndWait { [self] in
            LoopBound(SignalWatcher(loop: loop, server: self), loop: loop)
        }
        state.withLock { $0.signals = watcher }
    }

    /// Applies a new configuration to every loop. Invalid ones throw and the
    /// old configuration stays.
    public func reload(_ configuration: Configuration) throws {
        let current = state.withLock { $0.runtime }
        let next: RuntimeConfig
        do {
            next = try RuntimeConfig(configuration, previous: current)
        } catch {
            throw StartupError(message: error.message)
        }
        if configuration.listen != current.configuration.listen || configuration.threads != current.configuration.threads {
            logger.warning("listen and threads changes take effect on restart only")
        }
        next.activate()
        metrics.declare(Self.declaredCounters(next))
        budget.limit.store(configuration.limits.maxConnections, ordering: .relaxed)
        let (proxies, jobLoops) = state.withLock {
            $0.runtime = next
            return ($0.everyProxy, $0.everyJobLoop)
        }
        for proxy in proxies {
            proxy.loop.execute { proxy.value.apply(next) }
        }
        // After each loop's proxy (the same loop, in order): the jobs read its configuration.
        for jobLoop in jobLoops {
            jobLoop.loop.execute { jobLoop.value.configChanged() }
        }
        logger.info("configuration reloaded", metadata: ["routes": "\(configuration.routes.count)", "upstreams": "\(configuration.upstreams.count)"])
    }

    func reloadFromSource() {
        guard let reloadSource else {
            logger.warning("SIGHUP ignored: no configuration file to reload")
            return
        }
        do {
            try reload(try reloadSource())
        } catch {
            logger.error("reload failed, keeping the running configuration: \(error)")
        }
    }

    /// Stops accepting, lets open exchanges finish within `shutdown_grace`,
    /// then stops the loops; `waitUntilStopped` returns after that.
    public func beginShutdown() {
        let (proxies, grace) = state.withLock { s -> ([LoopBound<ProxyLoop>], Duration) in
            guard s.phase == .running else { return ([], .zero) }
            s.phase = .draining
            return (s.proxies, s.runtime.configuration.limits.shutdownGrace)
        }
        guard !proxies.isEmpty else { return }
        // Queued jobs stay in the store for the next start; running ones finish.
        jobs.stopDispatching()
        logger.info("draining", metadata: ["open_connections": "\(budget.current)", "grace": "\(grace)"])
        for proxy in proxies {
            proxy.loop.execute { proxy.value.beginDrain() }
        }
        let deadline = monotonicNanos() + UInt64(max(0, grace.nanoseconds))
        let loop = group.loops[0]
        loop.execute { [self] in
            DrainWatch(loop: loop, deadline: deadline, server: self).start()
        }
    }

    func drainFinished(timedOut: Bool) {
        if timedOut {
            logger.warning("shutdown_grace passed; closing \(budget.current) connections, \(jobs.running) background exchanges left for the next start")
        }
        let proxies = state.withLock { s -> [LoopBound<ProxyLoop>] in
            s.phase = .stopped
            return s.proxies
        }
        for proxy in proxies {
            proxy.loop.execute { proxy.value.flushLogs() }
        }
        stopped.signal()
    }

    var openConnections: Int { budget.current }

    /// Open client connections and background exchanges: what a drain waits for.
    var busy: Bool { budget.current > 0 || jobs.busy }

    /// Blocks the calling thread (not a loop) until the drain is over, then
    /// stops and joins the loops.
    public func waitUntilStopped() {
        stopped.wait()
        if let shared = jobs.shared {
            for jobLoop in state.withLock({ $0.everyJobLoop }) { try? jobLoop.loop.submitAndWait { jobLoop.value.closeShared() } }
            shared.close()
            jobs.removeOwnSpool()
        }
        group.shutdown()
        jobs.store.close()
        logger.info("stopped")
    }

    /// For tests: drain, wait, stop.
    public func shutdown() {
        let wasRunning = phase == .running
        beginShutdown()
        if wasRunning {
            waitUntilStopped()
        } else if phase == .initial {
            group.shutdown()
        }
    }
}

public struct StartupError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}

/// Polls the connection count while draining; a coarse timer is fine here
/// (shutdown only), and the budget is the one count shared by every loop.
final class DrainWatch {
    let deadline: UInt64
    unowned let server: CoatcheckServer
    private var timer: Timer!
    private var retained: DrainWatch?

    init(loop: EventLoop, deadline: UInt64, server: CoatcheckServer) {
        self.deadline = deadline
        self.server = server
        self.timer = Timer(loop: loop) { [unowned self] in self.check() }
    }

    func start() {
        retained = self
        check()
    }

    private func check() {
        if !server.busy {
            finish(timedOut: false)
        } else if monotonicNanos() >= deadline {
            finish(timedOut: true)
        } else {
            timer.schedule(after: .milliseconds(20))
        }
    }

    private func finish(timedOut: Bool) {
        server.drainFinished(timedOut: timedOut)
        retained = nil
    }
}

/// SIGTERM, SIGINT and SIGHUP, on loop 0.
final class SignalWatcher {
    unowned let server: CoatcheckServer
    private var events: SignalEvents!

    init(loop: EventLoop, server: CoatcheckServer) {
        self.server = server
        events = SignalEvents(loop: loop, signals: [SIGTERM, SIGINT, SIGHUP]) { [unowned self] signo in
            self.received(signo)
        }
    }

    private func received(_ signo: Int32) {
        if signo == SIGHUP {
            server.logger.info("SIGHUP: reloading configuration")
            server.reloadFromSource()
        } else {
            server.logger.info("signal \(signo): shutting down")
            server.beginShutdown()
        }
    }
}

/// `store: redis://...` with the `redis:` block.
func sharedSettings(_ url: RedisURL, _ c: Configuration) -> RedisJobStore.Settings {
    let endpoint = RedisEndpoint(host: url.host, port: url.port, database: url.database, username: url.username,
                                 password: url.password)
    return RedisJobStore.Settings(endpoint: endpoint, prefix: c.redis.prefix, lease: c.redis.lease,
                                  waitReplicas: c.redis.waitReplicas, resultTTL: c.jobs.resultTTL)
}

/// Names this process in its claims: host, pid and a random part, so a
/// restarted replica never mistakes its predecessor's claims for its own.
func replicaName() -> String {
    var host = [CChar](repeating: 0, count: 256)
    gethostname(&host, host.count - 1)
    let name = String(decoding: host.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return "\(name)-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))"
}

/// `store:` as configured.
func openStore(_ location: StoreLocation) throws(StoreError) -> any JobStore {
    switch location {
    case .memory: return MemoryStore()
    case .sqlite(let path): return try SQLiteStore(path: path)
    case .redis: throw StoreError("the redis store is opened by the server (it needs the loops)")
    }
}

/// Deletes jobs past `result_ttl`, a few times per TTL (at most every 30 s,
/// at least every 100 ms); lookups hide expired jobs in between.
final class ExpirySweeper {
    unowned let server: CoatcheckServer
    private var timer: Timer!

    init(loop: EventLoop, server: CoatcheckServer) {
        self.server = server
        self.timer = Timer(loop: loop) { [unowned self] in self.sweep() }
        schedule()
    }

    private func schedule() {
        let ttl = server.configuration.jobs.resultTTL
        timer.schedule(after: min(max(ttl / 4, .milliseconds(100)), .seconds(30)))
    }

    private func sweep() {
        server.jobs.expire(now: wallClockMillis(), ttl: server.configuration.jobs.resultTTL)
        schedule()
    }
}
