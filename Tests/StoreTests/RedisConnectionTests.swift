import Foundation
import Loop
import Store
import TestSupport
import Testing

func endpoint(_ server: RedisServer, database: Int = 0, password: String? = nil) -> RedisEndpoint {
    RedisEndpoint(host: "127.0.0.1", port: server.port, database: database, password: password ?? server.password)
}

/// The hiredis connection every Redis store conversation goes through,
/// against a real redis-server.
@Suite(.serialized) struct RedisConnectionTests {
    @Test func everyKindOfReplyArrivesAsSent() throws {
        let server = try RedisServer()
        let client = try RedisClient(endpoint(server))
        #expect(client.waitReady())
        // Bytes a text protocol would trip on: CR LF, NUL, 0xFF.
        let odd: [UInt8] = [0x00, 0x0D, 0x0A, 0xFF, 0x24, 0x2A]
        #expect(try client.runBytes("SET", [Array("k".utf8), odd]).get() == .status("OK"))
        #expect(try client.runBytes("GET", [Array("k".utf8)]).get() == .bulk(odd))
        #expect(try client.run("GET", "missing").get() == .null)
        #expect(try client.run("INCRBY", "n", "41").get() == .integer(41))
        #expect(try client.run("RPUSH", "l", "a", "", "c").get() == .integer(3))
        #expect(try client.run("LRANGE", "l", "0", "-1").get() == .array([.bulk(Array("a".utf8)), .bulk([]), .bulk(Array("c".utf8))]))
        // An error reply is an answer: the connection goes on.
        let wrong = try client.run("LPUSH", "k", "x").get()
        #expect(wrong.errorMessage?.hasPrefix("WRONGTYPE") == true)
        #expect(try client.run("PING").get() == .status("PONG"))
        #expect(client.losses.isEmpty)
    }

    @Test func pipelinedCommandsAreAnsweredInOrder() throws {
        let server = try RedisServer()
        let client = try RedisClient(endpoint(server))
        #expect(client.waitReady())
        let results = client.runAll(Array(repeating: ["INCR", "counter"], count: 5_000))
        #expect(results.compactMap { try? $0.get().integer } == (1...5_000).map(Int64.init))
    }

    @Test func authenticatesAndSelectsItsDatabase() throws {
        let server = try RedisServer(password: "s3cret pass")
        let three = try RedisClient(endpoint(server, database: 3))
        #expect(three.waitReady())
        #expect(try three.run("SET", "where", "db3").get() == .status("OK"))
        let zero = try RedisClient(endpoint(server))
        #expect(zero.waitReady())
        #expect(try zero.run("GET", "where").get() == .null)
        #expect(try three.run("GET", "where").get() == .bulk(Array("db3".utf8)))

        // A wrong password never gets ready; why is said, the password is not.
        let wrong = try RedisClient(endpoint(server, password: "hunter2"))
        #expect(waitUntil(timeout: 5) { !wrong.losses.isEmpty })
        #expect(!wrong.isReady)
        let why = wrong.losses[0]
        #expect(why.hasPrefix("AUTH: "), "\(why)")
        #expect(!why.contains("hunter2") && !why.contains("s3cret"))
        guard case .failure = wrong.run("PING") else {
            Issue.record("a command on an unauthenticated connection was answered")
            return
        }
    }

    @Test func aKilledServerFailsWhatIsInFlightAndIsReconnectedWhenBack() throws {
        let server = try RedisServer()
        let client = try RedisClient(endpoint(server))
        #expect(client.waitReady())
        server.kill()
        // Seen at the next command at the latest: it fails, it does not hang.
        let start = ContinuousClock.now
        _ = waitUntil(timeout: 3) { !client.losses.isEmpty }
        guard case .failure = client.run("PING") else {
            Issue.record("PING answered with the server dead")
            return
        }
        #expect(secondsSince(start) < 3)
        #expect(!client.isReady)
        #expect(!client.losses.isEmpty)

        try server.start()
        // Retries back off to 2 s at most.
        #expect(client.waitReady(timeout: 5))
        #expect(try client.run("PING").get() == .status("PONG"))
    }

    @Test func aFrozenServerFailsCommandsAfterTheTimeoutThenRecovers() throws {
        let server = try RedisServer()
        let client = try RedisClient(endpoint(server), timeout: .milliseconds(400))
        #expect(client.waitReady())
        server.freeze()
        let start = ContinuousClock.now
        let results = client.runAll([["SET", "a", "1"], ["GET", "a"], ["PING"]])
        let elapsed = secondsSince(start)
        for r in results {
            guard case .failure(let e) = r else {
                Issue.record("answered while frozen: \(r)")
                continue
            }
            #expect(e.reason.contains("no answer within"), "\(e.reason)")
        }
        // The timeout, on a coarse clock, and no more than a tick of slack.
        #expect(elapsed >= 0.35 && elapsed < 2, "\(elapsed) s")
        #expect(!client.isReady)
        server.thaw()
        #expect(client.waitReady(timeout: 5))
        #expect(try client.run("PING").get() == .status("PONG"))
    }

    @Test func nothingListeningFailsFastAndConnectsOnceTheServerIsThere() throws {
        let server = try RedisServer()
        server.kill()
        let client = try RedisClient(endpoint(server))
        #expect(waitUntil(timeout: 3) { !client.losses.isEmpty })
        #expect(client.losses[0].lowercased().contains("refused"), "\(client.losses)")
        let start = ContinuousClock.now
        guard case .failure = client.run("PING") else {
            Issue.record("PING answered with nothing listening")
            return
        }
        #expect(secondsSince(start) < 1)
        try server.start()
        #expect(client.waitReady(timeout: 5))
        #expect(try client.run("PING").get() == .status("PONG"))
    }
}
