import CLibevent
import HTTP
import Loop

/// Idle keep-alive connections to one upstream, on one loop. Most recently
/// used first, so the warmest connection is reused and cold ones age out.
final class UpstreamPool {
    let loop: EventLoop
    let target: UpstreamTarget
    private var idle: [HTTPClientConnection] = []
    let maxIdle: Int

    init(loop: EventLoop, target: UpstreamTarget, maxIdle: Int = 128) {
        self.loop = loop
        self.target = target
        self.maxIdle = maxIdle
    }

    /// An idle connection, or nil when a new one must be made.
    func take() -> HTTPClientConnection? {
        while let c = idle.popLast() {
            c.onIdleClose = nil
            if c.isOpen { return c }
        }
        return nil
    }

    /// An exchange ended with a whole response: the connection goes back to
    /// the pool only if the whole request went out too (nothing of it left
    /// unsent), else it is closed.
    func checkIn(_ connection: HTTPClientConnection, requestWritten: Bool) {
        guard connection.isOpen else { return }
        if requestWritten, connection.output.map({ evbuffer_get_length($0) == 0 }) ?? false {
            put(connection)
        } else {
            connection.close()
        }
    }

    func put(_ connection: HTTPClientConnection) {
        guard connection.isOpen else { return }
        if idle.count >= maxIdle {
            connection.close()
            return
        }
        connection.becomeIdle()
        connection.onIdleClose = { [unowned self] c in
            self.idle.removeAll { $0 === c }
        }
        idle.append(connection)
    }

    func closeAll() {
        let all = idle
        idle.removeAll()
        for c in all {
            c.onIdleClose = nil
            c.close()
        }
    }
}
