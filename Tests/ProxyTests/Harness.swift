import Config
import DemoBackend
import Foundation
import HTTP
import Logging
import Loop
import Server
import Synchronization
import Testing

// Test helpers: real sockets on 127.0.0.1, port 0, bounded waits.

/// A parsed HTTP response as a test sees it.
struct Response {
    var status: Int
    var reason: String
    var headers: [(String, String)]
    var body: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.0.lowercased() == name.lowercased() }?.1
    }
    func headers(_ name: String) -> [String] {
        headers.filter { $0.0.lowercased() == name.lowercased() }.map(\.1)
    }
    var text: String { String(decoding: body, as: UTF8.self) }
}

/// A lock-protected value that closures can share.
final class Box<T: Sendable>: Sendable {
    private let m: Mutex<T>
    init(_ v: T) { m = Mutex(v) }
    func withLock<R>(_ body: (inout T) -> R) -> R { m.withLock { body(&$0) } }
}

/// A blocking TCP client with a receive timeout, for exact bytes in and out.
final class RawClient {
    let fd: Int32
    var buffer: [UInt8] = []
    var closed = false

    init(port: Int, timeout: Double = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 { close(fd); throw TestError("connect to \(port) failed: errno \(errno)") }
        setTimeout(timeout)
    }

    deinit { close(fd) }

    func setTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + offset, $0.count - offset, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { throw TestError("send failed: errno \(errno)") }
            offset += n
        }
    }

    /// Reads more bytes; false on EOF, throws on timeout.
    @discardableResult
    func fill() throws -> Bool {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &chunk, chunk.count, 0)
        if n > 0 { buffer.append(contentsOf: chunk[0..<n]); return true }
        if n == 0 { closed = true; return false }
        if errno == ECONNRESET { closed = true; return false }
        throw TestError("recv timed out or failed: errno \(errno)")
    }

    /// Reads one whole response (Content-Length, chunked or until close).
    func readResponse(head: Bool = false) throws -> Response {
        while true {
            if let (r, used) = try parseResponse(buffer, requestWasHead: head, atEOF: closed) {
                buffer.removeFirst(used)
                return r
            }
            if closed { throw TestError("connection closed before a whole response: \(buffer.count) bytes: \(String(decoding: buffer.prefix(200), as: UTF8.self))") }
            try fill()
        }
    }

    /// True if the server closes the connection (EOF or reset) within the timeout.
    func waitForClose() -> Bool {
        while !closed {
            guard (try? fill()) != nil else { return false }
        }
        return true
    }
}

struct TestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Parses one response from the front of `bytes`; nil if incomplete.
func parseResponse(_ bytes: [UInt8], requestWasHead: Bool = false, atEOF: Bool = false) throws -> (Response, Int)? {
    guard let headEnd = find(bytes, Array("\r\n\r\n".utf8)) else { return nil }
    let headText = String(decoding: bytes[0..<headEnd], as: UTF8.self)
    var lines = headText.components(separatedBy: "\r\n")
    let statusLine = lines.removeFirst()
    let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count >= 2, let status = Int(parts[1]) else { throw TestError("bad status line \(statusLine)") }
    var r = Response(status: status, reason: parts.count > 2 ? String(parts[2]) : "", headers: [], body: [])
    for line in lines {
        guard let colon = line.firstIndex(of: ":") else { throw TestError("bad header line \(line)") }
        r.headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
    }
    var offset = headEnd + 4
    if status == 100 {
        return try parseResponse(Array(bytes[offset...]), requestWasHead: requestWasHead, atEOF: atEOF).map { ($0.0, $0.1 + offset) }
    }
    if requestWasHead || status == 204 || status == 304 || status < 200 { return (r, offset) }
    if r.header("transfer-encoding")?.lowercased() == "chunked" {
        while true {
            guard let lineEnd = find(Array(bytes[offset...]), Array("\r\n".utf8)) else { return nil }
            let sizeText = String(decoding: bytes[offset..<offset + lineEnd], as: UTF8.self)
            guard let size = Int(sizeText.split(separator: ";")[0], radix: 16) else { throw TestError("bad chunk size \(sizeText)") }
            offset += lineEnd + 2
            if size == 0 {
                guard bytes.count >= offset + 2 else { return nil }
                return (r, offset + 2)
            }
            guard bytes.count >= offset + size + 2 else { return nil }
            r.body.append(contentsOf: bytes[offset..<offset + size])
            offset += size + 2
        }
    }
    if let cl = r.header("content-length").flatMap(Int.init) {
        guard bytes.count >= offset + cl else { return nil }
        r.body = Array(bytes[offset..<offset + cl])
        return (r, offset + cl)
    }
    guard atEOF else { return nil }
    r.body = Array(bytes[offset...])
    return (r, bytes.count)
}

func find(_ haystack: [UInt8], _ needle: [UInt8]) -> Int? {
    guard haystack.count >= needle.count else { return nil }
    var i = 0
    while i <= haystack.count - needle.count {
        if haystack[i] == needle[0] && Array(haystack[i..<i + needle.count]) == needle { return i }
        i += 1
    }
    return nil
}

/// One request on a fresh connection.
func request(_ port: Int, _ text: String, head: Bool = false) throws -> Response {
    let c = try RawClient(port: port)
    try c.send(text)
    return try c.readResponse(head: head)
}

func get(_ port: Int, _ path: String, headers: String = "") throws -> Response {
    try request(port, "GET \(path) HTTP/1.1\r\nHost: test.local\r\n\(headers)Connection: close\r\n\r\n")
}

/// An in-process demo backend on its own loop thread.
final class InProcessBackend: @unchecked Sendable {
    let group = EventLoopGroup(count: 1)
    var port = 0
    var backend: LoopBound<DemoBackend>!
    let stats = DemoStats()

    init() throws {
        group.start()
        let loop = group.loops[0]
        let stats = self.stats
        let (b, p) = try loop.submitAndWait { () throws -> (LoopBound<DemoBackend>, Int) in
            let b = DemoBackend(loop: loop, stats: stats)
            let p = try b.server.listen(host: "127.0.0.1", port: 0, reusePort: false)
            return (LoopBound(b, loop: loop), p)
        }
        backend = b
        port = p
    }

    deinit { group.shutdown() }
}

/// A scripted upstream on plain blocking sockets: records every byte it is
/// sent and answers each connection with `reply(requestBytes)`.
final class RecordingUpstream: @unchecked Sendable {
    let fd: Int32
    let port: Int
    private let state = Box<(received: [UInt8], connections: Int)>(([], 0))
    /// Connections the proxy closed (EOF or reset seen while reading).
    private let peerCloses = Box<Int>(0)
    let reply: @Sendable ([UInt8]) -> [UInt8]?
    let closeAfterReply: Bool
    private let thread: Thread?

    /// `reply` gets the bytes so far and returns what to send once it has
    /// seen enough (nil: keep reading).
    init(closeAfterReply: Bool = true, reply: @escaping @Sendable ([UInt8]) -> [UInt8]?) throws {
        self.reply = reply
        self.closeAfterReply = closeAfterReply
        let (fd, port) = listenLoopback(backlog: 64)
        self.fd = fd
        self.port = port
        let listenFD = fd
        let st = state
        let closeAfter = closeAfterReply
        let reply = self.reply
        let closes = peerCloses
        thread = Thread {
            while true {
                let c = accept(listenFD, nil, nil)
                if c < 0 { return }
                st.withLock { $0.connections += 1 }
                Thread.detachNewThread {
                    var got: [UInt8] = []
                    var chunk = [UInt8](repeating: 0, count: 65536)
                    var tv = timeval(tv_sec: 10, tv_usec: 0)
                    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                    while true {
                        let n = recv(c, &chunk, chunk.count, 0)
                        if n == 0 || (n < 0 && errno == ECONNRESET) { closes.withLock { $0 += 1 } }
                        if n <= 0 { break }
                        got.append(contentsOf: chunk[0..<n])
                        st.withLock { $0.received.append(contentsOf: chunk[0..<n]) }
                        if let out = reply(got) {
                            _ = out.withUnsafeBytes { Glibc.send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                            got.removeAll()
                            if closeAfter { break }
                        }
                    }
                    close(c)
                }
            }
        }
        thread?.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    var received: [UInt8] { state.withLock { $0.received } }
    var receivedText: String { String(decoding: received, as: UTF8.self) }
    var connections: Int { state.withLock { $0.connections } }
    /// How many of its connections the proxy has closed so far.
    var closedByPeer: Int { peerCloses.withLock { $0 } }
}

/// Replies once a whole request head (and its Content-Length body) is in.
func whenRequestComplete(_ response: String) -> @Sendable ([UInt8]) -> [UInt8]? {
    let bytes = Array(response.utf8)
    return { got in
        guard let end = find(got, Array("\r\n\r\n".utf8)) else { return nil }
        let head = String(decoding: got[0..<end], as: UTF8.self).lowercased()
        if let line = head.components(separatedBy: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
           let n = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) {
            return got.count >= end + 4 + n ? bytes : nil
        }
        if head.contains("transfer-encoding: chunked") {
            return find(got, Array("0\r\n\r\n".utf8)) != nil ? bytes : nil
        }
        return bytes
    }
}

/// A coatcheck server in this process, in front of `upstreamPort`.
final class TestProxy {
    let server: CoatcheckServer
    /// What it started with (a reload starts from this).
    let configuration: Configuration
    var port: Int { server.port }

    init(upstreamPort: Int, threads: Int = 1, yaml extra: (inout Configuration) -> Void = { _ in }) throws {
        var c = Configuration()
        c.listen = SocketAddressSpec(host: "127.0.0.1", port: 0)
        c.threads = threads
        c.accessLog = false
        c.store = "memory:"
        c.jobs.dir = makeTempDirectory()
        c.upstreams = [Upstream(name: "app", url: UpstreamURL(scheme: "http", host: "127.0.0.1", port: upstreamPort, pathPrefix: ""))]
        var route = Route(upstream: "app")
        route.mode = .sync
        c.routes = [route]
        extra(&c)
        configuration = c
        server = try CoatcheckServer(configuration: c, logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        try server.start()
    }

    deinit { server.shutdown() }
}

/// A listening socket on 127.0.0.1, port 0: its descriptor and port.
func listenLoopback(backlog: Int32) -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(4))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = 0
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    _ = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    listen(fd, backlog)
    var bound = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return (fd, Int(UInt16(bigEndian: bound.sin_port)))
}

/// A fresh directory under /tmp.
func makeTempDirectory() -> String {
    var template = Array("/tmp/coatcheck-test-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(p != nil, "mkdtemp failed")
    return String(cString: p!)
}

/// The built `coatcheck` binary beside the test bundle.
var coatcheckBinary: String {
    let bundle = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    for candidate in [bundle, bundle.deletingLastPathComponent()] {
        let p = candidate.appendingPathComponent("coatcheck").path
        if FileManager.default.isExecutableFile(atPath: p) { return p }
    }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent(".build/debug/coatcheck").path
}

/// A child process whose stdout and stderr lines are collected.
final class Child: @unchecked Sendable {
    let process = Process()
    private let lines = Box<[String]>([])
    private let stdoutPipe = Pipe(), stderrPipe = Pipe()
    /// Pipes (of 2) that reached EOF.
    private let closedPipes = Box<Int>(0)

    init(_ arguments: [String], environment: [String: String]? = nil) throws {
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

    var output: [String] { lines.withLock { $0 } }

    /// Waits for a line containing `needle`; returns it.
    func waitForLine(containing needle: String, timeout: Double = 15) throws -> String {
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

    func waitForExit(timeout: Double = 15) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
        return process.isRunning ? nil : process.terminationStatus
    }

    func signal(_ s: Int32) { kill(process.processIdentifier, s) }

    /// Waits until both stdout and stderr reached EOF, so `output` is complete.
    func waitForOutputEnd(timeout: Double = 5) -> Bool {
        waitUntil(timeout: timeout) { self.closedPipes.withLock { $0 } == 2 }
    }

    /// Peak resident memory (VmHWM) in KiB.
    var peakRSSKiB: Int {
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
func portIn(_ line: String) -> Int? {
    let pattern = #/127\.0\.0\.1:(\d+)/#
    return line.firstMatch(of: pattern).flatMap { Int($0.1) }
}

/// Starts a `coatcheck demo-backend` process on a free port.
func demoBackendProcess() throws -> (Child, Int) {
    let child = try Child(["demo-backend", "--listen", "127.0.0.1:0"])
    let line = try child.waitForLine(containing: "listening on")
    guard let port = portIn(line) else { throw TestError("no port in \(line)") }
    return (child, port)
}

/// Starts `coatcheck serve ARGS` and returns it with its proxy port (and admin port if any).
func serveProcess(_ args: [String], environment: [String: String]? = nil) throws -> (Child, Int, Int?) {
    let child = try Child(["serve"] + args, environment: environment)
    let line = try child.waitForLine(containing: "coatcheck listening")
    let listen = line.firstMatch(of: #/"listen":"127\.0\.0\.1:(\d+)"/#).flatMap { Int($0.1) }
    let admin = line.firstMatch(of: #/"admin":"127\.0\.0\.1:(\d+)"/#).flatMap { Int($0.1) }
    guard let listen else { throw TestError("no listen port in \(line)") }
    return (child, listen, admin)
}

/// A file in Tests/Fixtures.
func fixturePath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent(name).path
}
