import Dispatch
import Loop
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The lazy timer's promises: never early, never after `cancel`, the last
/// `schedule` wins, and re-arming from the action works.
@Suite struct TimerTests {
    /// Fire times (ms after start) of one timer on its own loop.
    final class Probe: @unchecked Sendable {
        let group = EventLoopGroup(count: 1)
        var loop: EventLoop { group.loops[0] }
        let fires = Mutex<[Double]>([])
        let start = ContinuousClock.now
        var timer: Timer!

        init() {
            group.start()
        }

        deinit { group.shutdown() }

        func onLoop(_ work: @escaping @Sendable (Probe) -> Void) {
            let done = DispatchSemaphore(value: 0)
            loop.execute { [self] in
                if timer == nil {
                    timer = Timer(loop: loop) { [unowned self] in
                        let ms = Double((ContinuousClock.now - start).components.attoseconds) / 1e15
                            + Double((ContinuousClock.now - start).components.seconds) * 1000
                        fires.withLock { $0.append(ms) }
                    }
                }
                work(self)
                done.signal()
            }
            done.wait()
        }

        func elapsedMillis() -> Double {
            let d = ContinuousClock.now - start
            return Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15
        }

        var fired: [Double] { fires.withLock { $0 } }
    }

    @Test func aCanceledTimerNeverFires() {
        let p = Probe()
        p.onLoop { $0.timer.schedule(after: .milliseconds(30)); $0.timer.cancel() }
        // Elapsed time is the check: nothing by 4x the canceled deadline.
        Thread.sleepMillis(120)
        #expect(p.fired.isEmpty)
    }

    @Test func theLastScheduleWinsAndNothingFiresEarly() {
        let p = Probe()
        // Re-armed every 8 ms for 40 ms: the pending event is reused; it
        // must still not fire before the last deadline (5 ms: the coarse
        // clock's tick).
        var lastArmed = 0.0
        for _ in 0..<5 {
            p.onLoop { $0.timer.schedule(after: .milliseconds(800)) }
            lastArmed = p.elapsedMillis()
            Thread.sleepMillis(8)
        }
        // Elapsed time is the check: one fire, not early, and no second by 1 s.
        Thread.sleepMillis(1000)
        #expect(p.fired.count == 1)
        if let at = p.fired.first {
            #expect(at >= lastArmed + 800 - 5, "fired at \(at) ms, armed for \(lastArmed + 800) ms")
        }
    }

    @Test func aShorterDeadlineReplacesALongerOne() {
        let p = Probe()
        p.onLoop { $0.timer.schedule(after: .seconds(10)) }
        p.onLoop { $0.timer.schedule(after: .milliseconds(20)) }
        // Elapsed time is the check: exactly one fire within 300 ms.
        Thread.sleepMillis(300)
        #expect(p.fired.count == 1)
    }

    @Test func cancelThenScheduleAgainFiresOnceAtTheNewDeadline() {
        let p = Probe()
        p.onLoop { $0.timer.schedule(after: .milliseconds(100)); $0.timer.cancel() }
        // Re-armed 50 ms later, so the canceled deadline would fall before the new one.
        Thread.sleepMillis(50)
        let armed = p.elapsedMillis()
        p.onLoop { $0.timer.schedule(after: .milliseconds(100)) }
        // Elapsed time is the check: one fire (not the canceled one too) by 300 ms.
        Thread.sleepMillis(300)
        #expect(p.fired.count == 1)
        if let at = p.fired.first { #expect(at >= armed + 100 - 5) }
    }

    /// A loop with precise timers (the demo backend's) keeps deadlines on
    /// the precise clock: a timer never fires before its delay has passed,
    /// which the coarse clock's tick allows, and not a tick after it.
    @Test func preciseTimersFireOnTheDelayNotOnATick() throws {
        let group = EventLoopGroup(count: 1, preciseTimers: true)
        group.start()
        defer { group.shutdown() }
        let loop = group.loops[0]
        final class Holder: @unchecked Sendable { var timer: Timer? }
        let holder = Holder()
        let fired = DispatchSemaphore(value: 0)
        let firedAt = Mutex(ContinuousClock.now)
        try loop.submitAndWait { holder.timer = Timer(loop: loop) { firedAt.withLock { $0 = .now }; fired.signal() } }
        var lateness: [Double] = []
        for _ in 0..<16 {
            let armed = ContinuousClock.now
            loop.execute { holder.timer?.schedule(after: .milliseconds(10)) }
            #expect(fired.wait(timeout: .now() + 2) == .success)
            let d = firedAt.withLock { $0 } - armed
            lateness.append(Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 - 10)
        }
        try loop.submitAndWait { holder.timer = nil }
        #expect(lateness.allSatisfy { $0 >= 0 }, "fired early: \(lateness) ms")
        #expect(lateness.sorted()[lateness.count / 2] < 1.5, "a tick late: \(lateness) ms")
    }

    @Test func theActionMayArmItsTimerAgain() {
        let group = EventLoopGroup(count: 1)
        group.start()
        defer { group.shutdown() }
        let count = Mutex(0)
        let done = DispatchSemaphore(value: 0)
        final class Holder: @unchecked Sendable { var timer: Timer? }
        let holder = Holder()
        group.loops[0].execute {
            holder.timer = Timer(loop: group.loops[0]) {
                let n = count.withLock { $0 += 1; return $0 }
                if n < 3 { holder.timer?.schedule(after: .milliseconds(5)) } else { done.signal() }
            }
            holder.timer?.schedule(after: .milliseconds(5))
        }
        #expect(done.wait(timeout: .now() + 2) == .success)
        #expect(count.withLock { $0 } == 3)
        group.loops[0].execute { holder.timer = nil }
    }
}

enum Thread {
    static func sleepMillis(_ ms: Int) {
        var ts = timespec(tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000)
        nanosleep(&ts, nil)
    }
}
