public import Config
public import HTTP
public import Logging
public import Loop
public import Proxy
public import Store

/// The jobs of one event loop: what the proxy on that loop hands over
/// (`JobService`: async and auto routes, the job endpoint), the background
/// exchanges running here, and the retries waiting here. Shared state (the
/// table, the store, drain counts) is the `JobEngine`'s.
public final class JobLoop: JobService {
    /// The proxy on the same loop; it holds this object (`ProxyLoop.jobs`).
    public unowned let proxy: ProxyLoop
    public let engine: JobEngine
    let loop: EventLoop
    let jobIDs = JobIDSource()
    let jsonWriter = ByteWriter(capacity: 1024)
    /// Background exchanges running on this loop, by job (for DELETE).
    var runners: [JobID: JobRunner] = [:]
    /// Jobs waiting out a retry backoff on this loop.
    var retryTimers: [JobID: Timer] = [:]
    var baseScratch: [UInt8] = []

    /// Registers itself with `proxy`; call on its loop.
    public init(proxy: ProxyLoop, engine: JobEngine) {
        self.proxy = proxy
        self.engine = engine
        self.loop = proxy.loop
        proxy.jobs = self
    }

    /// With the Redis store: this loop's claims, long polls and wake-ups.
    var shared: SharedJobs?

    /// With the Redis store: subscribes and starts claiming on this loop.
    public func startShared() {
        loop.preconditionInEventLoop()
        guard let store = engine.shared, shared == nil else { return }
        let s = SharedJobs(jobs: self, store: store)
        shared = s
        s.start()
    }

    /// Stops claiming and closes the subscriptions (shutdown).
    public func closeShared() {
        shared?.close()
        shared = nil
        deliverer?.closeShared()
    }

    /// A reload reached this loop (after its proxy's): with Redis, the
    /// upstreams claimed for follow it.
    public func configChanged() {
        shared?.configChanged()
    }

    /// This loop's Redis command connection was made or lost.
    public func sharedConnectionChanged(_ change: RedisConnection.Change) {
        shared?.connectionChanged(change)
    }

    /// Webhook deliveries, on the one loop that runs them (`startDeliveries`).
    var deliverer: WebhookDeliverer?

    /// Makes this loop the one that delivers webhooks (the server gives them
    /// a loop of their own): due callbacks are handed here from any loop
    /// (and from the store's context), and the ones a previous run left
    /// pending are scheduled now. With Redis, the deliverer claims the
    /// replicas' due deliveries itself, woken by the job ends it hears.
    public func startDeliveries() {
        loop.preconditionInEventLoop()
        let deliverer = WebhookDeliverer(jobs: self)
        self.deliverer = deliverer
        guard engine.shared == nil else { return }
        let bound = LoopBound(self, loop: loop)
        table.onCallbackDue { record, response in
            bound.loop.execute { bound.value.deliverer?.schedule(record, response: response) }
        }
        for record in table.pendingCallbacks() { deliverer.schedule(record) }
    }

    var config: RuntimeConfig { proxy.config }
    var log: Logger { proxy.log }
    var table: JobTable { engine.table }
    var store: any JobStore { engine.table.store }

    /// Names the job in the exchange's access log line (its first 8 characters).
    func logJob(_ id: JobID, on client: HTTPServerConnection) {
        proxy.logJob(id.logPrefix, on: client)
    }

    public func handler(for request: MessageReader, route: CompiledRoute,
                        on connection: HTTPServerConnection) -> any RequestHandler {
        var callback: JobCallback?
        if request.callbackURLCount != 0, let header = request.first(.callbackURL) {
            // Refused before any job exists (SPEC §4), however it is spelled.
            guard let settings = config.configuration.routes[route.index].callback else {
                return proxy.refuse(.callbackNotAllowed, on: connection)
            }
            guard request.callbackURLCount == 1,
                  let url = CallbackURL.parse(String(decoding: request.value(header), as: UTF8.self)),
                  url.isAllowed(byAny: settings.allow) else {
                return proxy.refuse(.callbackURLRefused, on: connection)
            }
            callback = JobCallback(url: url.description)
        }
        if let shared {
            if route.mode == .auto,
               JobPreference(of: request, maxWait: config.configuration.jobs.maxWait) != .respondAsync {
                return SharedAutoIntake(shared: shared, client: connection, request: request, route: route,
                                        credential: credential(of: request), base: publicBase(for: request), callback: callback)
            }
            return SharedIntake(shared: shared, client: connection, request: request, route: route,
                                credential: credential(of: request), base: publicBase(for: request), callback: callback)
        }
        return JobIntake(jobs: self, client: connection, request: request, route: route,
                         credential: credential(of: request), base: publicBase(for: request), callback: callback)
    }
}
