public import Foundation

/// The built `coatcheck` binary beside the test bundle.
public var coatcheckBinary: String {
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundle, bundle.deletingLastPathComponent()] {
        let p = candidate.appendingPathComponent("coatcheck").path
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/debug/coatcheck").path
}

/// A `coatcheck` child process whose stdout and stderr lines are collected.
/// Its output and its exit are signalled, so every wait here returns as
/// soon as what it waits for has happened.
public final class Child: @unchecked Sendable {
    // `process` is configured before `run` and only read after; the rest
    // is immutable or a Box.
    public let process = Process()
    private struct Output: Sendable {
        var lines: [String] = []
        /// Pipes (of 2) that reached EOF: at 2, `lines` is complete.
        var closedPipes = 0
    }
    private let out = Box(Output())
    private let exitStatus = Box<Int32?>(nil)
    private let stdoutPipe = Pipe(), stderrPipe = Pipe()

    /// Runs `executable` (default: the built `coatcheck`) with `arguments`.
    public init(_ arguments: [String], environment: [String: String]? = nil, executable: String? = nil) throws {
        process.executableURL = URL(fileURLWithPath: executable ?? coatcheckBinary)
        process.arguments = arguments
        if let environment { process.environment = environment }
        // Each child in a directory of its own: the default store
        // (sqlite:./data/coatcheck.db) is one process's at a time.
        process.currentDirectoryURL = URL(fileURLWithPath: makeTempDirectory())
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        let exitStatus = self.exitStatus
        process.terminationHandler = { p in
            let status = p.terminationStatus
            exitStatus.withLock { $0 = status }
        }
        // One blocking reader thread per pipe: Foundation's readabilityHandler
        // on Linux can drop the EOF (and split lines), which made output
        // checks flaky.
        for pipe in [stdoutPipe, stderrPipe] {
            let out = self.out
            let fd = pipe.fileHandleForReading.fileDescriptor
            Thread.detachNewThread {
                var pending: [UInt8] = []
                var chunk = [UInt8](repeating: 0, count: 4096)
                while true {
                    let n = read(fd, &chunk, chunk.count)
                    if n <= 0 { break }
                    pending.append(contentsOf: chunk[0..<n])
                    while let nl = pending.firstIndex(of: 0x0A) {
                        let line = String(decoding: pending[..<nl], as: UTF8.self)
                        pending.removeSubrange(...nl)
                        out.withLock { $0.lines.append(line) }
                    }
                }
                out.withLock { o in
                    if !pending.isEmpty { o.lines.append(String(decoding: pending, as: UTF8.self)) }
                    o.closedPipes += 1
                }
            }
        }
        // The test runner's threads block most signals and a spawned child
        // inherits the spawning thread's mask: with SIGTERM/SIGHUP blocked,
        // signal tests could never reach the child. Spawn with an empty mask.
        var empty = sigset_t(), saved = sigset_t()
        sigemptyset(&empty)
        pthread_sigmask(SIG_SETMASK, &empty, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        try process.run()
    }

    public var output: [String] { out.withLock { $0.lines } }

    /// Waits for a line containing `needle`; returns it.
    public func waitForLine(containing needle: String, timeout: Double = 15) throws -> String {
        var found: String?
        var ended = false
        _ = out.wait(timeout: timeout) { o in
            found = o.lines.first { $0.contains(needle) }
            ended = o.closedPipes == 2
            return found != nil || ended
        }
        if let found { return found }
        if ended {
            let status = waitForExit(timeout: 5).map { "\($0)" } ?? "still running"
            throw TestError("process exited (\(status)) before printing \(needle): \(output)")
        }
        throw TestError("timed out waiting for \(needle): \(output)")
    }

    /// Waits for more than `count` lines of output; whether they came.
    public func waitForOutput(beyond count: Int, timeout: Double) -> Bool {
        out.wait(timeout: timeout) { $0.lines.count > count }
    }

    /// The exit status, once the process has exited within `timeout`.
    public func waitForExit(timeout: Double = 15) -> Int32? {
        var status: Int32?
        _ = exitStatus.wait(timeout: timeout) { s in
            status = s
            return s != nil
        }
        return status
    }

    /// Signals the child while it runs: once it has exited and been reaped,
    /// its pid may be another process's (pid_max is 32768 here).
    public func signal(_ s: Int32) {
        if process.isRunning { kill(process.processIdentifier, s) }
    }

    /// Waits until both stdout and stderr reached EOF, so `output` is complete.
    public func waitForOutputEnd(timeout: Double = 5) -> Bool {
        out.wait(timeout: timeout) { $0.closedPipes == 2 }
    }

    /// Peak resident memory (VmHWM) in KiB.
    public var peakRSSKiB: Int {
        let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? 0
        }
        return 0
    }

    deinit {
        if process.isRunning {
            process.terminate()
            // Never hang a test run on a child that ignores SIGTERM.
            if waitForExit(timeout: 5) == nil { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
    }
}

/// The port in a "... listening on HOST:PORT" or `"listen":"HOST:PORT"` line.
public func portIn(_ line: String) -> Int? {
    let pattern = #/127\.0\.0\.1:(\d+)/#
    return line.firstMatch(of: pattern).flatMap { Int($0.1) }
}

/// Starts a `coatcheck demo-backend` process on a free port.
public func demoBackendProcess() throws -> (Child, Int) {
    let child = try Child(["demo-backend", "--listen", "127.0.0.1:0"])
    let line = try child.waitForLine(containing: "listening on")
    guard let port = portIn(line) else { throw TestError("no port in \(line)") }
    return (child, port)
}

/// Starts `coatcheck serve ARGS` and returns it with its proxy port (and admin port if any).
public func serveProcess(_ args: [String], environment: [String: String]? = nil) throws -> (Child, Int, Int?) {
    let child = try Child(["serve"] + args, environment: environment)
    let line = try child.waitForLine(containing: "coatcheck listening")
    let listen = line.firstMatch(of: #/"listen":"127\.0\.0\.1:(\d+)"/#).flatMap { Int($0.1) }
    let admin = line.firstMatch(of: #/"admin":"127\.0\.0\.1:(\d+)"/#).flatMap { Int($0.1) }
    guard let listen else { throw TestError("no listen port in \(line)") }
    return (child, listen, admin)
}
