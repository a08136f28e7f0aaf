import Foundation
import Dispatch
import Loop
import Synchronization
import Testing

/// Hand-over between threads: closures run on the loop in the order they
/// were queued; inside `deferringWakeups` the loop is not woken until the
/// scope ends.
@Suite struct EventLoopTests {
    @Test func executeRunsOnTheLoopInOrder() throws {
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        let loop = group.loops[0]
        let seen = Mutex<[Int]>([])
        let done = DispatchSemaphore(value: 0)
        for n in 0..<100 {
            loop.execute {
                seen.withLock { $0.append(loop.inEventLoop ? n : -1) }
                if n == 99 { done.signal() }
            }
        }
        #expect(done.wait(timeout: .now() + 5) == .success)
        #expect(seen.withLock { $0 } == Array(0..<100))
    }

    /// What `ps -L` shows: each loop's thread by its group's name and index,
    /// renamed in place, cut to the 15 bytes Linux keeps.
    @Test func loopThreadsAreNamed() throws {
        let group = EventLoopGroup(count: 2, name: "probe")
        group.start()
        defer { group.shutdown() }
        func name(on loop: EventLoop, renaming newName: String? = nil) throws -> String {
            try loop.submitAndWait {
                if let newName { nameCurrentThread(newName) }
                return try String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)
            }
        }
        #expect(try name(on: group.loops[0]) == "probe 0\n")
        #expect(try name(on: group.loops[1]) == "probe 1\n")
        #expect(try name(on: group.loops[1], renaming: "a name longer than fifteen") == "a name longer t\n")
    }

    @Test func deferredWakeupsHoldTheWorkUntilTheScopeEnds() throws {
        let group = EventLoopGroup(count: 2)
        group.start()
        defer { group.shutdown() }
        let ran = DispatchSemaphore(value: 0)
        let order = Mutex<[Int]>([])
        EventLoop.deferringWakeups {
            for n in 0..<10 {
                let loop = group.loops[n % 2]
                loop.execute {
                    order.withLock { $0.append(n) }
                    ran.signal()
                }
            }
            EventLoop.deferringWakeups {
                // A nested scope joins the outer one: still nothing runs.
                group.loops[0].execute { ran.signal() }
            }
            // Both loops are idle and nobody woke them.
            #expect(ran.wait(timeout: .now() + .milliseconds(100)) == .timedOut)
        }
        for _ in 0..<11 {
            #expect(ran.wait(timeout: .now() + 5) == .success)
        }
        let seen = order.withLock { $0 }
        #expect(seen.filter { $0 % 2 == 0 } == [0, 2, 4, 6, 8])
        #expect(seen.filter { $0 % 2 == 1 } == [1, 3, 5, 7, 9])
    }
}
