import ArgumentParser
import Config
import DemoBackend
import HTTP
import Logging
import Loop
import Server

#if canImport(Glibc)
import Glibc
#endif

struct Coatcheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coatcheck",
        abstract: "A reverse proxy that turns long requests into 202 jobs.",
        subcommands: [Serve.self, CheckConfig.self, DemoBackendCommand.self],
        defaultSubcommand: Serve.self
    )
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the proxy (precedence: flags, then environment, then the file, then defaults)."
    )

    @Option(name: .long, help: "YAML configuration file (env COATCHECK_CONFIG).")
    var config: String?
    @Option(name: .long, help: "Listen address HOST:PORT (env COATCHECK_LISTEN).")
    var listen: String?
    @Option(name: .long, help: "Upstream URL: one upstream, one catch-all auto route (env COATCHECK_UPSTREAM).")
    var upstream: String?
    @Option(name: .long, help: "Job store: memory:, sqlite:PATH or redis://HOST:PORT/DB (env COATCHECK_STORE).")
    var store: String?
    @Option(name: .customLong("async-after"), help: "How long auto routes wait before answering 202, e.g. 2s.")
    var asyncAfter: String?
    @Option(name: .customLong("admin-listen"), help: "Admin listener HOST:PORT for /healthz and /readyz.")
    var adminListen: String?
    @Option(name: .long, help: "Event-loop threads: a number or auto.")
    var threads: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    private var overrides: ConfigOverrides {
        ConfigOverrides(
            listen: listen, upstream: upstream, store: store,
            asyncAfter: asyncAfter.flatMap(parseDuration), adminListen: adminListen,
            threads: threads, logLevel: logLevel)
    }

    mutating func validate() throws {
        if let asyncAfter, parseDuration(asyncAfter) == nil {
            throw ValidationError("--async-after: expected a duration like 250ms, 2s, 15m")
        }
        if let problem = overrides.invalidFlag() { throw ValidationError(problem) }
    }

    func run() throws {
        let overrides = self.overrides
        let environment = processEnvironment()
        let file = config
        let configuration: Configuration
        do {
            configuration = try ConfigLoader.resolve(file: file, flags: overrides, environment: environment)
        } catch {
            printError(error.description)
            throw ExitCode(1)
        }
        let level = Logger.Level(rawValue: configuration.logLevel.rawValue) ?? .info
        LoggingSystem.bootstrap { JSONLineLogHandler(label: $0, level: level) }
        let logger = Logger(label: "coatcheck")
        warnIfUpstreamOverrideReplacesRoutes(flag: overrides.upstream, file: file, environment: environment, logger: logger)

        let reloadSource: (@Sendable () throws -> Configuration)?
        if file != nil || environment["COATCHECK_CONFIG"] != nil {
            reloadSource = { try ConfigLoader.resolve(file: file, flags: overrides, environment: environment) }
        } else {
            reloadSource = nil
        }
        do {
            let server = try CoatcheckServer(configuration: configuration, logger: logger, reloadSource: reloadSource)
            try server.start()
            server.installSignalHandlers()
            server.waitUntilStopped()
        } catch {
            printError("coatcheck: \(error)")
            throw ExitCode(1)
        }
    }
}

/// `--upstream` (or `COATCHECK_UPSTREAM`) with a file that has routes of its
/// own: the precedence of SPEC §1 replaces them, callbacks and all, with the
/// one catch-all route. That is the sidecar case when the file has none;
/// when it has some, say so once, at start.
private func warnIfUpstreamOverrideReplacesRoutes(flag: String?, file: String?, environment: [String: String],
                                                  logger: Logger) {
    let nonEmpty = { (name: String) in environment[name].flatMap { $0.isEmpty ? nil : $0 } }
    let source = flag != nil ? "--upstream" : (nonEmpty("COATCHECK_UPSTREAM") != nil ? "COATCHECK_UPSTREAM" : nil)
    guard let source, let path = file ?? nonEmpty("COATCHECK_CONFIG"),
          let fromFile = try? ConfigLoader.load(path: path), !fromFile.routes.isEmpty else { return }
    logger.warning("\(source) replaces the file's routes and upstreams with one catch-all auto route", metadata: [
        "file": "\(path)", "routes": "\(fromFile.routes.count)", "upstreams": "\(fromFile.upstreams.count)",
    ])
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file: exit 0, or exit 1 with FILE:LINE:COL: message."
    )

    @Argument(help: "The YAML file to check.")
    var file: String

    func run() throws {
        do {
            let config = try ConfigLoader.load(path: file)
            print("\(file): ok (\(config.upstreams.count) upstreams, \(config.routes.count) routes)")
        } catch {
            printError(error.description)
            throw ExitCode(1)
        }
    }
}

struct DemoBackendCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-backend",
        abstract: "A small slow synchronous backend: /sleep?ms=N /status/CODE /echo /bytes/N /stats /webhook (prints each delivery)."
    )

    @Option(name: .long, help: "Listen address HOST:PORT (port 0 picks a free port).")
    var listen: String

    mutating func validate() throws {
        if SocketAddressSpec(parsing: listen) == nil {
            throw ValidationError("--listen: expected HOST:PORT")
        }
    }

    func run() throws {
        let address = SocketAddressSpec(parsing: listen)!
        signal(SIGPIPE, SIG_IGN)
        // `/sleep?ms=100` answers after 100 ms, not a clock tick later.
        let group = EventLoopGroup(count: 1, name: "backend", preciseTimers: true)
        group.start()
        let loop = group.loops[0]
        let backend: LoopBound<DemoBackend>
        do {
            let (bound, port) = try loop.submitAndWait { () throws -> (LoopBound<DemoBackend>, Int) in
                let b = DemoBackend(loop: loop)
                let p = try b.server.listen(host: address.host, port: address.port, reusePort: false)
                return (LoopBound(b, loop: loop), p)
            }
            backend = bound
            print("demo-backend listening on \(SocketAddressSpec(host: address.host, port: port))")
            fflush(nil)
        } catch {
            printError("demo-backend: \(error)")
            throw ExitCode(1)
        }
        // Runs until killed; the backend lives as long as its loop.
        withExtendedLifetime(backend) { group.join() }
    }
}

func printError(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

func processEnvironment() -> [String: String] {
    var result: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") {
            result[String(s[..<eq])] = String(s[s.index(after: eq)...])
        }
        p += 1
    }
    return result
}

/// A parent may start us with signals blocked (posix_spawn keeps the
/// spawning thread's mask, and thread pools block signals): then SIGTERM and
/// SIGHUP would never arrive. Start from an empty mask, as nginx does.
func resetSignalMask() {
    var empty = sigset_t()
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, nil)
    for signo in [SIGTERM, SIGINT, SIGHUP] { signal(signo, SIG_DFL) }
}

resetSignalMask()
Coatcheck.main()
