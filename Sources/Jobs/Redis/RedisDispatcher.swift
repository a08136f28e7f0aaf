public import Loop
public import Store

/// Runs a job this replica claimed from Redis; the jobs layer's side of a
/// `RedisDispatcher`.
public protocol ClaimRunner: AnyObject {
    /// Sends the claimed job; when its end is written (or the claim was
    /// found lost), calls `dispatcher.ended(_:upstream:)`.
    func run(_ claim: RedisJobStore.Claim, for dispatcher: RedisDispatcher)
    /// Stops a job's exchange: its claim is gone (another replica owns the
    /// job) or it was canceled on some replica.
    func abort(_ id: JobID, claimLost: Bool)
}

/// One loop's share of this replica's background work with the Redis
/// store (SPEC §5b): for each upstream it serves, claims jobs while Redis
/// gives slots (`ClaimSchedule`), renews the claims of the exchanges running
/// here every third of the lease, and stops the exchanges whose claim was
/// lost or whose job was canceled. A poll every `pollInterval` catches
/// wake-ups missed while pub/sub was down and leases lapsed by a dead
/// replica, so a takeover waits at most the lease and one poll.
///
/// Confined to its loop.
public final class RedisDispatcher {
    public let loop: EventLoop
    public let store: RedisJobStore
    private unowned let runner: any ClaimRunner

    private struct Upstream {
        var limit: Int
        var schedule = ClaimSchedule()
        /// Claims whose exchange runs here, by job.
        var running: Set<JobID> = []
        let backoffTimer: Timer
    }

    private var upstreams: [String: Upstream] = [:]
    private let renewTimer: Timer
    private let pollTimer: Timer
    public let pollInterval: Duration
    private var stopped = false
    /// How many more jobs of the upstream this replica may take now (0
    /// when draining; else its free local slots): a busy replica leaves
    /// them to the others.
    public var room: (String) -> Int = { _ in 1 }

    public init(loop: EventLoop, store: RedisJobStore, upstreams: [(name: String, limit: Int)], runner: any ClaimRunner,
                pollInterval: Duration? = nil) {
        self.loop = loop
        self.store = store
        self.runner = runner
        self.pollInterval = pollInterval ?? min(store.settings.lease / 3, .seconds(1))
        renewTimer = Timer(loop: loop)
        pollTimer = Timer(loop: loop)
        for u in upstreams { add(u.name, limit: u.limit) }
        renewTimer.setAction { [unowned self] in self.renew() }
        pollTimer.setAction { [unowned self] in self.poll() }
    }

    private func add(_ name: String, limit: Int) {
        let timer = Timer(loop: loop)
        upstreams[name] = Upstream(limit: limit, backoffTimer: timer)
        timer.setAction { [unowned self] in self.handle(.backoffEnded, name) }
    }

    /// A reload: upstreams added are claimed for from now on, limits
    /// follow the configuration, and removed ones are no longer claimed
    /// (their jobs running here end here).
    public func update(upstreams list: [(name: String, limit: Int)]) {
        loop.preconditionInEventLoop()
        let names = Set(list.map(\.name))
        for u in list {
            if upstreams[u.name] == nil { add(u.name, limit: u.limit) } else { upstreams[u.name]!.limit = u.limit }
        }
        for name in upstreams.keys where !names.contains(name) { upstreams[name]!.limit = 0 }
        for u in list { handle(.wake, u.name) }
    }

    /// Starts claiming (every upstream at once) and the timers.
    public func start() {
        loop.preconditionInEventLoop()
        renewTimer.schedule(after: store.settings.lease / 3)
        poll()
    }

    /// No new claims; the running exchanges are left to end (SIGTERM), or
    /// to their lease if this process dies first.
    public func stop() {
        loop.preconditionInEventLoop()
        stopped = true
        pollTimer.cancel()
        for u in upstreams.values { u.backoffTimer.cancel() }
        if upstreams.values.allSatisfy({ $0.running.isEmpty }) { renewTimer.cancel() }
    }

    /// Jobs running here for `upstream`.
    public func running(_ upstream: String) -> Int { upstreams[upstream]?.running.count ?? 0 }

    /// A job was queued for `upstream` somewhere, or a slot may be free.
    public func wake(_ upstream: String) {
        loop.preconditionInEventLoop()
        handle(.wake, upstream)
    }

    /// A claimed job's exchange ended and its end is written (or its claim
    /// was lost): its slot is free again.
    public func ended(_ id: JobID, upstream: String) {
        loop.preconditionInEventLoop()
        upstreams[upstream]?.running.remove(id)
        handle(.wake, upstream)
    }

    /// A job this replica wrote claimed (an `auto` exchange that became
    /// one): renewed with the others until `ended`.
    public func adopt(_ id: JobID, upstream: String) {
        loop.preconditionInEventLoop()
        upstreams[upstream]?.running.insert(id)
        if stopped { renewTimer.schedule(after: store.settings.lease / 3) }
    }

    private func poll() {
        guard !stopped else { return }
        for name in upstreams.keys { handle(.wake, name) }
        pollTimer.schedule(after: pollInterval)
    }

    private func handle(_ event: ClaimSchedule.Event, _ name: String) {
        guard !stopped || event != .wake, upstreams[name] != nil else { return }
        switch upstreams[name]!.schedule.handle(event) {
        case .none: break
        case .claim: claim(name)
        case .armBackoff(let wait): upstreams[name]!.backoffTimer.schedule(after: wait)
        }
    }

    private func claim(_ name: String) {
        let room = stopped ? 0 : room(name)
        guard let limit = upstreams[name]?.limit, limit > 0, room > 0 else {
            handle(.claimed(found: false), name)
            return
        }
        store.claim(upstream: name, limit: limit, max: room, now: wallClockMillis(), on: loop) { [weak self] result in
            guard let self else { return }
            switch result {
            case .failure:
                self.handle(.failed, name)
            case .success((let claims, _)):
                for claim in claims {
                    self.upstreams[name]?.running.insert(claim.record.id)
                    self.runner.run(claim, for: self)
                }
                self.handle(.claimed(found: !claims.isEmpty), name)
            }
        }
    }

    private func renew() {
        for (name, u) in upstreams where !u.running.isEmpty {
            let ids = Array(u.running)
            store.renew(ids, upstream: name, now: wallClockMillis(), on: loop) { [weak self] result in
                // Unreachable: the claims stand until their lease; the next renewal tries again.
                guard let self, case .success(let answer) = result else { return }
                for id in answer.lost where self.upstreams[name]?.running.remove(id) != nil {
                    self.runner.abort(id, claimLost: true)
                }
                for id in answer.canceled { self.runner.abort(id, claimLost: false) }
            }
        }
        if !stopped || upstreams.values.contains(where: { !$0.running.isEmpty }) {
            renewTimer.schedule(after: store.settings.lease / 3)
        }
    }
}
