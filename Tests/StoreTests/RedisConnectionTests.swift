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

/// A `RedisSubscriber` on a loop of its own, its messages and changes collected.
private final class Listener: @unchecked Sendable {
    let group = EventLoopGroup(count: 1)
    private final class Holder: @unchecked Sendable { var subscriber: RedisSubscriber? }
    private let holder = Holder()
    let messages = Box<[String]>([])
    let readies = Box(0)

    init(_ endpoint: RedisEndpoint, channel: String) throws {
        group.start()
        let (messages, readies, holder) = (self.messages, self.readies, self.holder)
        let loop = group.loops[0]
        try loop.submitAndWait {
            holder.subscriber = RedisSubscriber(loop: loop, endpoint: endpoint, channel: channel, onChange: { change in
                if change == .ready { readies.withLock { $0 += 1 } }
            }, onMessage: { payload in
                messages.withLock { $0.append(String(decoding: payload, as: UTF8.self)) }
            })
            holder.subscriber?.start()
        }
    }

    func reset() {
        let holder = self.holder
        try? group.loops[0].submitAndWait { holder.subscriber?.reset() }
    }

    deinit {
        let holder = self.holder
        try? group.loops[0].submitAndWait {
            holder.subscriber?.close()
            holder.subscriber = nil
        }
        group.shutdown()
    }
}

@Suite(.serialized) struct RedisSubscriberTests {
    @Test func messagesArriveAndTheSubscriptionSurvivesARestart() throws {
        let server = try RedisServer(password: "pw")
        let publisher = try RedisClient(endpoint(server))
        #expect(publisher.waitReady())
        let listener = try Listener(endpoint(server), channel: "t:events")
        #expect(listener.readies.wait(timeout: 5) { $0 == 1 })
        #expect(try publisher.run("PUBLISH", "t:events", "end abc").get() == .integer(1))
        #expect(try publisher.run("PUBLISH", "t:other", "not for us").get() == .integer(0))
        #expect(listener.messages.wait(timeout: 5) { $0 == ["end abc"] })

        // Redis restarted: subscribed again by itself, and told (so the
        // owner can look for what it missed).
        server.kill()
        try server.start()
        #expect(listener.readies.wait(timeout: 5) { $0 == 2 })
        #expect(publisher.waitReady())
        #expect(try publisher.run("PUBLISH", "t:events", "cancel def").get() == .integer(1))
        #expect(listener.messages.wait(timeout: 5) { $0 == ["end abc", "cancel def"] })

        // The owner's reset makes a new subscription.
        listener.reset()
        #expect(listener.readies.wait(timeout: 5) { $0 == 3 })
        #expect(try publisher.run("PUBLISH", "t:events", "queued u").get() == .integer(1))
        #expect(listener.messages.wait(timeout: 5) { $0.last == "queued u" })
    }
}
