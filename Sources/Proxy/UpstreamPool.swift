public import HTTP
public import Loop

/// Idle keep-alive connections to one upstream, on one loop. Most recently
/// used first, so the warmest connection is reused and cold ones age out:
/// `sweep` closes those idle for `maxAge` sweeps (`ProxyLoop` sweeps every
/// quarter of `limits.idle_timeout`), so a backend does not keep a worker
/// or a thread per connection a past burst opened.
public final class UpstreamPool {
    let loop: EventLoop
    let target: UpstreamTarget
    /// Oldest first: `take` pops the newest, `put` appends, so the sweep
    /// stamps only ever grow from front to back.
    private var idle: [(connection: HTTPClientConnection, since: UInt64)] = []
    /// Sweeps so far; a connection is stamped with it when it goes idle.
    private var sweeps: UInt64 = 0
    let maxIdle: Int

    /// Made once: every idle connection of the pool shares it.
    private var forgetClosed: ((HTTPClientConnection) -> Void)?

    init(loop: EventLoop, target: UpstreamTarget, maxIdle: Int = 128) {
        self.loop = loop
        self.target = target
        self.maxIdle = maxIdle
        forgetClosed = { [unowned self] c in
            self.idle.removeAll { $0.connection === c }
        }
    }

    /// An idle connection, or nil when a new one must be made.
    public func take() -> HTTPClientConnection? {
        while let c = idle.popLast()?.connection {
            c.onIdleClose = nil
            if c.isOpen { return c }
        }
        return nil
    }

    /// An exchange ended with a whole response: the connection goes back to
    /// the pool only if the whole request went out too (nothing of it left
    /// unsent), else it is closed.
    func checkIn(_ connection: consuming HTTPClientConnection, requestWritten: Bool) {
        guard connection.isOpen else { return }
        if requestWritten, connection.outputIsEmpty {
            put(connection)
        } else {
            connection.close()
        }
    }

    func put(_ connection: consuming HTTPClientConnection) {
        guard connection.isOpen else { return }
        if idle.count >= maxIdle {
            connection.close()
            return
        }
        connection.becomeIdle()
        connection.onIdleClose = forgetClosed
        idle.append((connection, sweeps))
    }

    /// Counts a sweep and closes the connections idle through `maxAge` of
    /// them (so for between `maxAge` and `maxAge + 1` sweep intervals).
    func sweep(maxAge: UInt64) {
        sweeps += 1
        let stale = idle.prefix { sweeps - $0.since > maxAge }.count
        guard stale > 0 else { return }
        let closing = idle[..<stale]
        idle.removeFirst(stale)
        for (c, _) in closing {
            c.onIdleClose = nil
            c.close()
        }
    }

    func closeAll() {
        let all = idle
        idle.removeAll()
        for (c, _) in all {
            c.onIdleClose = nil
            c.close()
        }
    }
}
