import Foundation

/// A real `redis-server` (Debian's; `Scripts/setup` installs it) on
/// 127.0.0.1, in a directory of its own, that a test can kill, freeze,
/// resume and restart on the same port.
///
/// Redis has no port 0 (it means "no TCP"): the port is one the kernel
/// just gave out and took back, and a start that loses it to another
/// process is tried again on a new one.
public final class RedisServer: @unchecked Sendable {
    // `child` changes only in `start`, called by the test's own thread.
    public private(set) var port = 0
    public let directory: String
    public let password: String?
    private let persistence: Bool
    private let replicaOf: Int?
    private var child: Child?

    public static var executable: String {
        for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] where FileManager.default.isExecutableFile(atPath: dir + "/redis-server") {
            return dir + "/redis-server"
        }
        return "redis-server"
    }

    /// Started and ready (it printed "Ready to accept connections").
    /// `persistence`: an append-only file with `appendfsync always`, so a
    /// restart keeps what was acknowledged.
    /// `replicaOf`: a replica of the Redis on that port, started once it
    /// has synchronized with it.
    public init(password: String? = nil, persistence: Bool = false, replicaOf: Int? = nil) throws {
        directory = makeTempDirectory(prefix: "coatcheck-redis")
        self.password = password
        self.persistence = persistence
        self.replicaOf = replicaOf
        var lastError: (any Error)?
        for _ in 0..<5 {
            port = try closedPort()
            do {
                try start()
                return
            } catch {
                lastError = error
            }
        }
        throw lastError!
    }

    deinit {
        if let child {
            child.signal(SIGKILL)
            child.signal(SIGCONT)
            _ = child.waitForExit(timeout: 5)
        }
        removeTree(directory)
    }

    public var pid: Int32 { child?.process.processIdentifier ?? 0 }

    /// Starts it again on the same port (after `kill`).
    public func start() throws {
        var args = [
            "--port", "\(port)", "--bind", "127.0.0.1", "--dir", directory, "--daemonize", "no",
            "--save", "", "--logfile", "", "--protected-mode", "no",
        ]
        args += persistence ? ["--appendonly", "yes", "--appendfsync", "always"] : ["--appendonly", "no"]
        if let password { args += ["--requirepass", password] }
        if let replicaOf { args += ["--replicaof", "127.0.0.1", "\(replicaOf)"] }
        let c = try Child(args, executable: Self.executable)
        child = c
        do {
            _ = try c.waitForLine(containing: "Ready to accept connections", timeout: 10)
            if replicaOf != nil { _ = try c.waitForLine(containing: "sync: Finished with success", timeout: 10) }
        } catch {
            c.signal(SIGKILL)
            _ = c.waitForExit(timeout: 5)
            child = nil
            throw error
        }
    }

    /// `kill -9`: gone at once, nothing written that was not yet.
    public func kill() {
        guard let c = child else { return }
        c.signal(SIGKILL)
        _ = c.waitForExit(timeout: 5)
        child = nil
    }

    /// SIGSTOP: connections stay open and nothing answers.
    public func freeze() { child?.signal(SIGSTOP) }

    public func thaw() { child?.signal(SIGCONT) }
}
