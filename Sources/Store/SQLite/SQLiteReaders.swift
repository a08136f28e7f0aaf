import CSQLite
import Synchronization

/// A read-only connection and its statements; used by one thread at a
/// time, handed between threads only through `ReaderPool`'s lock.
final class ReadConnection: @unchecked Sendable {
    let connection: Connection
    let loadAll, request, response, ping: Statement

    init(path: String) throws(StoreError) {
        connection = try Connection(path: path, flags: SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX)
        loadAll = try connection.prepare(loadAllSQL)
        request = try connection.prepare(requestSQL)
        response = try connection.prepare(responseSQL)
        ping = try connection.prepare("SELECT 1 FROM jobs LIMIT 1")
    }
}

final class ReaderPool: Sendable {
    struct State {
        var idle: [ReadConnection] = []
        var closed = false
    }

    let path: String
    private let state = Mutex(State())

    init(path: String) { self.path = path }

    /// Runs `body` on a connection of its own: an idle one, or a new one.
    /// A connection that saw an error is closed rather than kept.
    func with<T>(_ body: (ReadConnection) throws(StoreError) -> T) throws(StoreError) -> T {
        let idle = try state.withLock { s throws(StoreError) -> ReadConnection? in
            if s.closed { throw StoreError("sqlite: the store is closed") }
            return s.idle.popLast()
        }
        let reader: ReadConnection
        if let idle { reader = idle } else { reader = try ReadConnection(path: path) }
        let result: T
        do throws(StoreError) {
            result = try body(reader)
        } catch {
            reader.connection.close()
            throw error
        }
        let keep = state.withLock { s -> Bool in
            guard !s.closed, s.idle.count < SQLiteStore.maxIdleReaders else { return false }
            s.idle.append(reader)
            return true
        }
        if !keep { reader.connection.close() }
        return result
    }

    /// Closes the idle connections; busy ones close when they come back.
    func close() {
        let idle = state.withLock { s -> [ReadConnection] in
            s.closed = true
            let all = s.idle
            s.idle = []
            return all
        }
        for reader in idle { reader.connection.close() }
    }
}
