public import Config
public import HTTP
public import Store
public import Logging
public import Loop
public import Proxy

/// Background jobs on one loop: queued at their upstream's gate (FIFO with
/// sync requests, so `max_concurrency` counts both), marked `running`
/// durably before a byte goes upstream, and ended with their outcome.
extension JobLoop {
    /// Queues a committed job for a slot. Accepted jobs are never refused:
    /// they may wait beyond `max_queued`. `token` names a gate token whose
    /// withdraw hook the job's entry already has (set at its insert).
    public func dispatch(_ record: JobRecord, token preset: UInt64? = nil) {
        guard let target = config.upstream(named: record.upstream) else {
            failUnstarted(record.id, .upstreamUnreachable, "upstream '\(record.upstream)' is no longer configured")
            return
        }
        let bound = LoopBound(self, loop: loop)
        let id = record.id
        let gate = target.gate
        let token = preset ?? gate.makeToken()
        let waiter = GateWaiter(loop: loop, token: token) { bound.value.slotGranted(forJob: id, target: target) }
        switch gate.acquire(waiter, force: true) {
        case .acquired:
            slotGranted(forJob: id, target: target)
        case .queued:
            // A DELETE takes it out of the queue; a grant racing that is
            // released by `slotGranted`, which finds the job canceled.
            if preset == nil { table.setWithdraw(id, WithdrawHook(token: token, leave: target.withdraw)) }
        case .rejected:
            break
        }
    }

    /// A slot for a queued job: mark it running (durably, so a crash from
    /// here on counts as "was running"), then send.
    func slotGranted(forJob id: JobID, target: UpstreamTarget) {
        if engine.isStopping {
            // Draining: the job stays queued for the next start.
            target.gate.release()
            return
        }
        let now = wallClockMillis()
        let bound = LoopBound(self, loop: loop)
        engine.startBegan()
        let marked = table.apply(.dispatched, to: id, fill: { r in
            if r.startedAt == nil { r.startedAt = now }  // the first attempt's start
            r.attempts += 1
        }, done: { error in
            bound.loop.execute { bound.value.startJob(id, target: target, error: error) }
        })
        if marked == nil {
            engine.startEnded()
            target.gate.release()  // canceled or gone meanwhile
        }
    }

    private func startJob(_ id: JobID, target: UpstreamTarget, error: StoreError?) {
        if let error {
            // The running mark did not reach the store, so the job is still
            // queued there: give the slot back and try again shortly.
            log.error("job start not stored", metadata: ["job": "\(id)", "error": "\(error)"])
            target.gate.release()
            if let record = table.lookup(id), record.status == .queued { later(.seconds(1)) { $0.dispatch(record) } }
            engine.startEnded()
            return
        }
        guard let record = table.lookup(id), record.status == .running else {
            target.gate.release()
            engine.startEnded()
            return
        }
        if let request = table.takeRequest(id) {
            run(record, request, target: target)
            return
        }
        // Not kept in memory (beyond the request cache): from the store.
        let bound = LoopBound(self, loop: loop)
        store.request(of: id, on: loop) { result in
            let jobs = bound.value
            guard case .success(let request?) = result else {
                target.gate.release()
                jobs.engine.startEnded()
                jobs.jobFinished(id, .failure(.interrupted, "the stored request could not be read", .no))
                return
            }
            jobs.run(record, request, target: target)
        }
    }

    /// Sends a running job's request; from here the job runs (and counts
    /// as running) or ends.
    private func run(_ record: JobRecord, _ request: JobRequest, target: UpstreamTarget) {
        defer { engine.startEnded() }
        let id = record.id
        let bound = LoopBound(self, loop: loop)
        let runner = JobRunner(jobs: self, id: id, target: target, request: request, attempt: record.attempts,
                               isHead: record.method == "HEAD", resendable: record.resendable,
                               maxBody: config.configuration.jobs.maxResultBody) { outcome in
            bound.value.jobFinished(id, outcome)
        }
        guard table.setAbort(id, loop: loop, { bound.value.abortJob(id) }) else {
            target.gate.release()  // canceled before it started
            return
        }
        runners[id] = runner
        runner.start()
    }

    /// An `auto` exchange that became a job keeps running as the job's.
    func adopt(_ runner: JobRunner, for id: JobID) {
        let bound = LoopBound(self, loop: loop)
        if table.setAbort(id, loop: loop, { bound.value.abortJob(id) }) {
            runners[id] = runner
        } else {
            runner.abort()
        }
    }

    func abortJob(_ id: JobID) {
        runners.removeValue(forKey: id)?.abort()
    }

    /// Records how the job's exchange ended, or queues another attempt
    /// (SPEC §4, upstream retries). A result that lost a race with DELETE is
    /// dropped with its file.
    func jobFinished(_ id: JobID, _ outcome: JobRunner.Outcome) {
        runners[id] = nil
        if let delay = retryDelay(id, outcome) {
            if case .response(let response, _, _) = outcome { removeSpoolFile(response.body.filePath) }
            let code: JobErrorCode
            switch outcome {
            case .failure(let c, _, _): code = c
            case .response: code = .upstreamBadResponse
            }
            guard let queued = table.apply(.attemptFailed(code, retry: true), to: id) else { return }
            let bound = LoopBound(self, loop: loop)
            let timer = Timer(loop: loop) { bound.value.retryDue(queued) }
            retryTimers[id] = timer
            timer.schedule(after: delay)
            return
        }
        let now = wallClockMillis()
        let bound = LoopBound(self, loop: loop)
        // An outcome the store could not take is offered again shortly: the
        // job must not stay `running` with nothing running it.
        let storeFailed: @Sendable (StoreError?) -> Void = { [log] error in
            guard let error else { return }
            log.error("job outcome not stored, retrying", metadata: ["job": "\(id)", "error": "\(error)"])
            bound.loop.execute { bound.value.later(.seconds(1)) { $0.jobFinished(id, outcome) } }
        }
        switch outcome {
        case .response(let response, let contentType, _):
            let stored = table.apply(.responded, to: id, response: response, fill: { r in
                r.completedAt = now
                r.responseStatus = response.status
                r.contentType = contentType
                r.responseSize = response.body.size
            }, done: storeFailed)
            if stored == nil { removeSpoolFile(response.body.filePath) }
        case .failure(let code, let message, _):
            table.apply(.attemptFailed(code, retry: false), to: id, fill: { r in
                r.completedAt = now
                r.errorMessage = message
            }, done: storeFailed)
        }
    }

    /// Runs `work` on this loop after `delay` (store retries).
    func later(_ delay: Duration, _ work: @escaping (JobLoop) -> Void) {
        var timer: Timer?
        timer = Timer(loop: loop) { [unowned self] in
            work(self)
            timer = nil  // the closure held the timer until it fired
        }
        timer?.schedule(after: delay)
    }

    /// The wait before another attempt, or nil when this outcome stands
    /// (`UpstreamRetry`), while the job is still running and no drain began.
    private func retryDelay(_ id: JobID, _ outcome: JobRunner.Outcome) -> Duration? {
        guard let record = table.lookup(id), record.status == .running,
              let policy = config.upstream(named: record.upstream)?.config.retry, !engine.isStopping else { return nil }
        return UpstreamRetry.delay(after: outcome, attempts: record.attempts, resendable: record.resendable, policy: policy)
    }

    private func retryDue(_ record: JobRecord) {
        retryTimers[record.id] = nil
        guard !engine.isStopping else { return }  // stays queued for the next start
        dispatch(record)
    }

    /// A queued job that can never start (its upstream was removed).
    private func failUnstarted(_ id: JobID, _ code: JobErrorCode, _ message: String) {
        let now = wallClockMillis()
        table.apply(.dispatched, to: id, fill: { $0.startedAt = now })
        table.apply(.attemptFailed(code, retry: false), to: id, fill: { r in
            r.completedAt = now
            r.errorMessage = message
        })
    }
}
