import Foundation
import Loop
import Store
import TestSupport

/// One `RedisConnection` on a loop of its own, driven from the test's thread.
final class RedisClient: @unchecked Sendable {
    let group = EventLoopGroup(count: 1)
    var loop: EventLoop { group.loops[0] }
    /// Made, used and closed on `loop` only.
    private final class Holder: @unchecked Sendable { var connection: RedisConnection? }
    private let holder = Holder()
    fileprivate var connection: RedisConnection { holder.connection! }
    let changes = Box<[RedisConnection.Change]>([])

    init(_ endpoint: RedisEndpoint, timeout: Duration = .seconds(2)) throws {
        group.start()
        let changes = self.changes
        try loop.submitAndWait {
            self.holder.connection = RedisConnection(loop: self.loop, endpoint: endpoint, commandTimeout: timeout) { change in
                changes.withLock { $0.append(change) }
            }
            self.connection.start()
        }
    }

    deinit {
        let holder = self.holder
        try? loop.submitAndWait {
            holder.connection?.close()
            holder.connection = nil
        }
        group.shutdown()
    }

    var isReady: Bool { (try? loop.submitAndWait { self.connection.isReady }) ?? false }

    func waitReady(timeout: Double = 5) -> Bool {
        waitUntil(timeout: timeout) { self.isReady }
    }

    /// Sends one command and waits for its answer.
    func run(_ words: String...) -> Result<RedisValue, RedisUnavailable> {
        runAll([words])[0]
    }

    /// Sends every command at once (pipelined), then waits for every answer.
    func runAll(_ commands: [[String]], timeout: Double = 10) -> [Result<RedisValue, RedisUnavailable>] {
        let results = Box<[Int: Result<RedisValue, RedisUnavailable>]>([:])
        loop.execute {
            for (i, words) in commands.enumerated() {
                self.connection.send(RedisCommand(words)) { r in results.withLock { $0[i] = r } }
            }
        }
        _ = results.wait(timeout: timeout) { $0.count == commands.count }
        return results.withLock { r in (0..<commands.count).map { r[$0] ?? .failure(RedisUnavailable("test: no answer")) } }
    }

    func runBytes(_ name: StaticString, _ args: [[UInt8]]) -> Result<RedisValue, RedisUnavailable> {
        let result = Box<Result<RedisValue, RedisUnavailable>?>(nil)
        loop.execute {
            var c = RedisCommand(name)
            for a in args { c.append(a) }
            self.connection.send(c) { r in result.withLock { $0 = r } }
        }
        _ = result.wait(timeout: 10) { $0 != nil }
        return result.withLock { $0 } ?? .failure(RedisUnavailable("test: no answer"))
    }

    var losses: [String] {
        changes.withLock { $0.compactMap { if case .lost(let why) = $0 { return why } else { return nil } } }
    }
}

extension RedisClient {
    /// Runs a store script and waits for its answer.
    func script(_ script: RedisScript, keys: [String], now: Int64, ttl: Int64 = 60_000,
                _ arguments: [RedisArgument], prefix: String = "t") -> Result<RedisValue, RedisUnavailable> {
        let result = Box<Result<RedisValue, RedisUnavailable>?>(nil)
        loop.execute {
            self.connection.run(script, keys: keys, prefix: prefix, now: now, ttlMillis: ttl, arguments) { r in
                result.withLock { $0 = r }
            }
        }
        _ = result.wait(timeout: 10) { $0 != nil }
        return result.withLock { $0 } ?? .failure(RedisUnavailable("test: no answer"))
    }
}
