import Foundation

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

/// A child process whose stdout and stderr lines are collected.
public final class Child: @unchecked Sendable {
    public let process = Process()
    private let lines = Box<[String]>([])
    private let stdoutPipe = Pipe(), stderrPipe = Pipe()
    /// Pipes (of 2) that reached EOF.
    private let closedPipes = Box<Int>(0)

    public init(_ arguments: [String], environment: [String: String]? = nil) throws {
        process.executableURL = URL(fileURLWithPath: coatcheckBinary)
        process.arguments = arguments
        if let environment { process.environment = environment }
        // Each child in a directory of its own: the default store
        // (sqlite:./data/coatcheck.db) is one process's at a time.
        process.currentDirectoryURL = URL(fileURLWithPath: makeTempDirectory())
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        // One blocking reader thread per pipe: Foundation's readabilityHandler
        // on Linux can drop the EOF (and split lines), which made output
        // checks flaky.
        for pipe in [stdoutPipe, stderrPipe] {
            let l = lines
            let eof = closedPipes
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
                        l.withLock { $0.append(line) }
                    }
                }
                if !pending.isEmpty {
                    let line = String(decoding: pending, as: UTF8.self)
                    l.withLock { $0.append(line) }
                }
                eof.withLock { $0 += 1 }
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

    public var output: [String] { lines.withLock { $0 } }

    /// Waits for a line containing `needle`; returns it.
    public func waitForLine(containing needle: String, timeout: Double = 15) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let l = output.first(where: { $0.contains(needle) }) { return l }
            if !process.isRunning {
                Thread.sleep(forTimeInterval: 0.05)
                if let l = output.first(where: { $0.contains(needle) }) { return l }
                throw TestError("process exited (\(process.terminationStatus)) before printing \(needle): \(output)")
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
        throw TestError("timed out waiting for \(needle): \(output)")
    }

    public func waitForExit(timeout: Double = 15) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        return process.isRunning ? nil : process.terminationStatus
    }

    public func signal(_ s: Int32) { kill(process.processIdentifier, s) }

    /// Waits until both stdout and stderr reached EOF, so `output` is complete.
    public func waitForOutputEnd(timeout: Double = 5) -> Bool {
        waitUntil(timeout: timeout) { self.closedPipes.withLock { $0 } == 2 }
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
