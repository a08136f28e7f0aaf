import Config
import HTTP
import Logging
import Loop
import Meters
import Proxy
import Store

#if canImport(Glibc)
import Glibc
#endif

/// The webhook deliveries of this process (SPEC §4; DESIGN "Webhook
/// deliveries"), on one loop. A delivery is the job's callback state in the
/// store, made due in the commit that ends the job; this schedules the due
/// ones on a timer set for the earliest (no polling), runs at most
/// `callback.max_concurrency` attempts per route, and writes each attempt's
/// outcome back. Attempts go through the upstream-exchange core and its
/// pools, with gates of their own: they never hold an upstream slot.
///
/// With the Redis store (SPEC §5b) the deliveries of every replica are one
/// sorted set by due time: this claims the due ones for a while (each
/// claim lasts `claimLease`, after which any replica may take it again),
/// when a job's end is heard and on a short poll for retries come due, and
/// writes each outcome only while it still holds the claim.
final class WebhookDeliverer {
    unowned let jobs: JobLoop
    let loop: EventLoop
    /// Due times, earliest first (a binary heap); a job appears once per
    /// scheduling, stale entries are skipped when popped.
    private var due: [(at: Int64, id: JobID)] = []
    private var timer: Timer!
    private var timerAt: Int64?
    /// Attempts under way, by job: one at a time per job.
    private var attempts: [JobID: WebhookAttempt] = [:]
    /// Receivers by route and origin, with their resolved address, kept for
    /// a minute (then resolved again).
    private var receivers: [String: [String: (target: UpstreamTarget, until: Int64)]] = [:]
    /// `callback.max_concurrency`, per route label.
    private var gates: [String: LocalConcurrencyGate] = [:]
    /// Receivers being resolved, with who waits for each: a burst of due
    /// deliveries to one receiver resolves it once (and shares one pool).
    private var resolving: [String: [(UpstreamTarget?) -> Void]] = [:]
    /// Signing keys by route label, while its secrets stay the same.
    private var signingKeys: [String: WebhookKeys] = [:]
    /// Callback URLs parsed at their first attempt, with their receiver's
    /// origin (`scheme://host:port`), by their text (bounded).
    private var parsedURLs: [String: (url: CallbackURL, origin: String)] = [:]
    /// TLS contexts by `ca_file` ("" for none).
    private var contexts: [String: TLSClientContext] = [:]
    /// Name resolution and signing of large bodies: blocking work, off the loops.
    let blocking: EventLoopGroup

    /// The Redis store's deliveries this replica claimed, until their
    /// outcome is written.
    private var claimed: [JobID: JobRecord] = [:]
    private var shared: RedisJobStore? { jobs.engine.shared }
    /// Redis: no claim pass, or one under way (`again`: another is due when it ends).
    private enum ClaimPass { case idle, claiming(again: Bool) }
    private var pass = ClaimPass.idle
    private var pollTimer: Timer?
    /// Redis: the replicas' events, for the job ends (a delivery may be due).
    private var subscriber: RedisSubscriber?

    init(jobs: JobLoop) {
        self.jobs = jobs
        self.loop = jobs.loop
        blocking = EventLoopGroup(count: 1, name: "webhook io")
        blocking.start()
        timer = Timer(loop: loop) { [unowned self] in self.timerFired() }
        if let shared {
            let poll = Timer(loop: loop) { [unowned self] in
                self.claimDue()
                self.pollTimer?.schedule(after: Self.pollInterval)
            }
            pollTimer = poll
            poll.schedule(after: Self.pollInterval)
            let s = RedisSubscriber(loop: loop, endpoint: shared.settings.endpoint, channel: shared.keys.events,
                                    onChange: { [unowned self] change in
                                        if change == .ready { self.claimDue() }  // ends published meanwhile
                                    }, onMessage: { [unowned self] message in
                                        if message.starts(with: "end ".utf8) { self.claimDue() }
                                    })
            subscriber = s
            s.start()
            claimDue()
        }
    }

    /// Redis: stops the polling and closes the subscription (shutdown).
    func closeShared() {
        pollTimer?.cancel()
        pollTimer = nil
        subscriber?.close()
        subscriber = nil
    }

    deinit { blocking.shutdown() }

    var log: Logger { jobs.log }

    /// A job whose callback is due now or later; `response`, the result its
    /// end just wrote, is kept for the first attempt (within `keptBytesLimit`).
    func schedule(_ record: JobRecord, response: JobResponse? = nil) {
        guard shared == nil, !stopped, let callback = record.callback, callback.isPending else { return }
        if let response, record.status == .completed, kept[record.id] == nil {
            let cost = Self.cost(of: response)
            if keptBytes + cost <= Self.keptBytesLimit {
                kept[record.id] = response
                keptBytes += cost
            }
        }
        push(callback.nextAttemptAt ?? 0, record.id)
        arm()
    }

    /// Results of jobs that just ended, kept from their end to their first
    /// delivery attempt: a burst of deliveries reads none back from the
    /// store. Bounded; beyond it (and for retries) the store is read.
    private var kept: [JobID: JobResponse] = [:]
    private var keptBytes = 0
    static let keptBytesLimit = 16 << 20

    private static func cost(of r: JobResponse) -> Int {
        if case .inline(let body) = r.body { return 64 + r.headers.count + body.count }
        return 64 + r.headers.count
    }

    private func takeKept(_ id: JobID) -> JobResponse? {
        guard let r = kept.removeValue(forKey: id) else { return nil }
        keptBytes -= Self.cost(of: r)
        return r
    }

    /// After SIGTERM no new attempt starts: pending ones stay in the store
    /// for the next start.
    private var stopped: Bool { jobs.engine.isStopping }

    // MARK: The due heap

    private func push(_ at: Int64, _ id: JobID) {
        due.append((at, id))
        var i = due.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard due[i].at < due[parent].at else { break }
            due.swapAt(i, parent)
            i = parent
        }
    }

    private func pop() -> (at: Int64, id: JobID)? {
        guard !due.isEmpty else { return nil }
        due.swapAt(0, due.count - 1)
        let top = due.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < due.count && due[l].at < due[m].at { m = l }
            if r < due.count && due[r].at < due[m].at { m = r }
            if m == i { break }
            due.swapAt(i, m)
            i = m
        }
        return top
    }

    private func arm() {
        guard let first = due.first?.at else { return }
        if let at = timerAt, at <= first { return }
        timerAt = first
        timer.schedule(after: .milliseconds(max(0, first - wallClockMillis())))
    }

    private func timerFired() {
        timerAt = nil
        guard !stopped else { return }
        let now = wallClockMillis()
        while let top = due.first, top.at <= now {
            _ = pop()
            start(top.id, now: now)
        }
        arm()
    }

    // MARK: Attempts

    private func start(_ id: JobID, now: Int64) {
        guard attempts[id] == nil else { return }
        guard let record = shared == nil ? jobs.table.lookup(id) : claimed[id],
              let callback = record.callback, callback.isPending else {
            _ = takeKept(id)
            claimed[id] = nil  // Redis: nothing to send (its claim lapses by itself)
            return
        }
        if shared == nil, let at = callback.nextAttemptAt, at > now {
            push(at, id)  // moved later since it was scheduled
            return
        }
        let response = takeKept(id)
        guard let route = jobs.config.configuration.routes.first(where: { $0.label == record.route && $0.callback != nil }),
              let settings = route.callback else {
            finish(id, route: record.route, callback: callback, .unsendable("callback_not_configured"))
            return
        }
        guard let (url, origin) = parsedURL(callback.url) else {
            finish(id, route: record.route, callback: callback, .unsendable("bad_url"))
            return
        }
        // A reload may have narrowed `allow`: the configuration in force decides.
        guard url.isAllowed(byAny: settings.allow) else {
            finish(id, route: record.route, callback: callback, .unsendable("callback_not_allowed"))
            return
        }
        let attempt = WebhookAttempt(deliverer: self, record: record, callback: callback, url: url, settings: settings,
                                     response: response)
        attempts[id] = attempt
        receiver(for: url, origin: origin, route: record.route, settings: settings) { [weak attempt] target in
            guard let attempt else { return }
            guard let target else {
                attempt.end(.connectFailed)
                return
            }
            attempt.prepare(target: target)
        }
    }

    /// `text` parsed, once for many deliveries to the same receiver URL.
    private func parsedURL(_ text: String) -> (url: CallbackURL, origin: String)? {
        if let parsed = parsedURLs[text] { return parsed }
        guard let url = CallbackURL.parse(text) else { return nil }
        if parsedURLs.count >= 1024 { parsedURLs.removeAll(keepingCapacity: true) }
        let parsed = (url, "\(url.scheme)://\(url.host):\(url.port)")
        parsedURLs[text] = parsed
        return parsed
    }

    /// The route's signing keys (made again when a reload changed its secrets).
    func keys(for route: String, _ settings: Callback) -> WebhookKeys {
        if let keys = signingKeys[route], keys.secrets == settings.secrets { return keys }
        let keys = WebhookKeys(secrets: settings.secrets)
        signingKeys[route] = keys
        return keys
    }

    /// The receiver `url` names, as a pooled target; nil when its name does not resolve.
    private func receiver(for url: CallbackURL, origin: String, route: String, settings: Callback,
                          _ done: @escaping (UpstreamTarget?) -> Void) {
        let now = wallClockMillis()
        if let cached = receivers[route]?[origin], cached.until > now {
            done(cached.target)
            return
        }
        let key = "\(route) \(origin)"
        if resolving[key] != nil {
            resolving[key]!.append(done)
            return
        }
        let gate = gates[route] ?? {
            let g = LocalConcurrencyGate(limit: settings.maxConcurrency, maxQueued: Int.max)
            gates[route] = g
            return g
        }()
        gate.update(limit: settings.maxConcurrency, maxQueued: Int.max)
        var tls: TLSClientContext?
        if url.isTLS {
            let caKey = settings.caFile ?? ""
            if let context = contexts[caKey] {
                tls = context
            } else {
                do {
                    let context = try TLSClientContext(caFile: settings.caFile)
                    contexts[caKey] = context
                    tls = context
                } catch {
                    log.error("callback tls: \(error)")
                    done(nil)
                    return
                }
            }
        }
        var upstream = Upstream(name: "callback \(key)", url: UpstreamURL(
            scheme: url.isTLS ? "https" : "http", host: url.host, port: url.port, pathPrefix: ""))
        upstream.connectTimeout = settings.timeout
        upstream.timeout = settings.timeout
        let host = url.host, port = url.port
        let bound = LoopBound(self, loop: loop)
        let (tlsContext, peer) = (tls, upstream)
        resolving[key] = [done]
        blocking.loops[0].execute {
            let address = try? SocketAddress.resolve(host: host, port: port)
            bound.loop.execute {
                guard let address else {
                    for waiter in bound.value.resolving.removeValue(forKey: key) ?? [] { waiter(nil) }
                    return
                }
                let target = UpstreamTarget(standalone: peer, address: address, gate: gate, tls: tlsContext)
                bound.value.receivers[route, default: [:]][origin] = (target, wallClockMillis() + 60_000)
                for waiter in bound.value.resolving.removeValue(forKey: key) ?? [] { waiter(target) }
            }
        }
    }

    /// Writes an attempt's outcome (`callback`: the delivery as the attempt
    /// began); a retry is scheduled once it is durable.
    func finish(_ id: JobID, route: String, callback: JobCallback, _ result: AttemptResult) {
        attempts[id] = nil
        if let shared {
            return finishShared(id, round: callback.round, result, store: shared)
        }
        let policy = jobs.config.configuration.routes.first { $0.label == route }?.callback?.retry ?? Callback().retry
        let tried = callback.attempts + 1, round = callback.round
        let decision = DeliveryRule.decide(result, attempts: tried, policy: policy, now: wallClockMillis(),
                                           jitter: Double.random(in: 0..<1))
        let counted: DeliveryResult
        switch decision {
        case .delivered: counted = .delivered
        case .failed(let lastError):
            counted = .failed
            log.warning("callback failed", metadata: ["job": "\(id)", "error": "\(lastError)", "attempts": "\(tried)"])
        case .retry: counted = .failedAttempt
        }
        let retrying = counted == .failedAttempt
        let bound = LoopBound(self, loop: loop)
        let log = self.log
        // Deferred: an outcome lost in a crash means one more delivery, which
        // at-least-once allows; a burst's outcomes then share commits.
        jobs.table.updateCallback(of: id, deferred: true, { latest in
            // One attempt at a time: unless a re-arm came meanwhile, the latest is the one attempted.
            guard latest.isPending, latest.round == round, latest.attempts == tried - 1 else { return nil }
            switch decision {
            case .delivered: return latest.with(status: .delivered, attempts: tried, lastError: .some(nil))
            case .failed(let lastError): return latest.with(status: .failed, attempts: tried, lastError: lastError)
            case .retry(let lastError, let at): return latest.with(attempts: tried, lastError: lastError, nextAttemptAt: at)
            }
        }, done: { error in
            if let error {
                log.error("callback outcome not stored", metadata: ["job": "\(id)", "error": "\(error)"])
            } else if !retrying {
                return  // delivered or given up: nothing more to schedule
            }
            bound.loop.execute {
                let me = bound.value
                if error != nil {
                    // Not stored: the store's state stands; tried again in a second.
                    me.push(wallClockMillis() + 1000, id)
                    me.arm()
                } else if let record = me.jobs.table.lookup(id) {
                    me.schedule(record)  // a retry
                }
            }
        })
        // The attempt was made, whatever the store then says.
        count(counted, route: route)
    }

    private func count(_ result: DeliveryResult, route: String?) {
        guard let meters = jobs.proxy.meters else { return }
        let slot = jobs.config.routes.first { $0.label == route }?.meterSlot ?? MeterLabels.unrouted
        meters.add(MeterKey(.webhookDeliveries, slot: slot, result.rawValue))
    }

    // MARK: Redis

    /// How often due deliveries (retries, takeovers) are looked for besides
    /// the job ends heard.
    static let pollInterval: Duration = .milliseconds(250)

    /// A claimed delivery is another replica's to take after this: longer
    /// than an attempt can last (its `callback.timeout`, twice, for the wait
    /// for a slot), never shorter than the jobs' lease.
    private var claimLease: Duration {
        let longest = jobs.config.configuration.routes.compactMap { $0.callback?.timeout }.max() ?? .seconds(10)
        return max(longest * 2 + .seconds(1), shared?.settings.lease ?? .seconds(30))
    }

    /// Deliveries held at once: what the routes' `callback.max_concurrency`
    /// together can send, so no claim waits long for a slot.
    private var claimLimit: Int {
        let total = jobs.config.configuration.routes.compactMap { $0.callback?.maxConcurrency }.reduce(0, +)
        return max(1, min(total, 1024))
    }

    /// Claims the due deliveries this replica has room for and starts them
    /// (none while no route has callbacks: no script per job end then).
    private func claimDue() {
        guard let shared, !stopped, jobs.config.configuration.routes.contains(where: { $0.callback != nil }) else { return }
        if case .claiming = pass {
            pass = .claiming(again: true)
            return
        }
        let room = claimLimit - claimed.count
        guard room > 0 else { return }
        pass = .claiming(again: false)
        shared.claimDeliveries(max: room, lease: claimLease, now: wallClockMillis(), on: loop) { [self] result in
            let again = if case .claiming(true) = pass { true } else { false }
            pass = .idle
            guard case .success(let records) = result else { return }
            let now = wallClockMillis()
            for r in records where claimed[r.id] == nil {
                claimed[r.id] = r
                start(r.id, now: now)
            }
            // A full batch: more may be due than there was room for.
            if again || (records.count == room && claimed.count < claimLimit) { claimDue() }
        }
    }

    /// Writes an attempt's outcome while this replica holds the delivery;
    /// Redis unreachable: again in a second (the claim lasts meanwhile).
    private func finishShared(_ id: JobID, round: Int, _ result: AttemptResult, store: RedisJobStore) {
        guard let record = claimed[id], let callback = record.callback else { return }
        let now = wallClockMillis()
        let policy = jobs.config.configuration.routes.first { $0.label == record.route }?.callback?.retry ?? Callback().retry
        let tried = callback.attempts + 1
        let outcome: RedisJobStore.DeliveryOutcome, lastError: String?, counted: DeliveryResult
        switch DeliveryRule.decide(result, attempts: tried, policy: policy, now: now, jitter: Double.random(in: 0..<1)) {
        case .delivered: (outcome, lastError, counted) = (.delivered, nil, .delivered)
        case .failed(let e):
            (outcome, lastError, counted) = (.failed, e, .failed)
            log.warning("callback failed", metadata: ["job": "\(id)", "error": "\(e)", "attempts": "\(tried)"])
        case .retry(let e, let at): (outcome, lastError, counted) = (.retry(at: at), e, .failedAttempt)
        }
        count(counted, route: record.route)
        write(id, round: round, outcome, attempts: tried, lastError: lastError, store: store)
    }

    private func write(_ id: JobID, round: Int, _ outcome: RedisJobStore.DeliveryOutcome, attempts: Int, lastError: String?,
                       store: RedisJobStore) {
        store.finishDelivery(id, round: round, outcome, attempts: attempts, lastError: lastError, now: wallClockMillis(),
                             on: loop) { [self] result in
            switch result {
            case .success(let held):
                if !held { log.warning("callback claim lost before its outcome was written", metadata: ["job": "\(id)"]) }
                claimed[id] = nil
                claimDue()
            case .failure(let error):
                log.error("callback outcome not stored, retrying", metadata: ["job": "\(id)", "error": "\(error)"])
                jobs.later(.seconds(1)) { jobs in
                    jobs.deliverer?.write(id, round: round, outcome, attempts: attempts, lastError: lastError, store: store)
                }
            }
        }
    }
}
