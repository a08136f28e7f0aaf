import Config
import Foundation
import TestSupport
import Testing

func resolveError(file: String? = nil, flags: ConfigOverrides = .init(), env: [String: String] = [:]) -> ConfigError? {
    do {
        _ = try ConfigLoader.resolve(file: file, flags: flags, environment: env)
        return nil
    } catch {
        return error
    }
}

@Suite struct ResolveTests {
    static let fileYAML = """
        listen: "0.0.0.0:7000"
        store: "sqlite:/var/lib/cc.db"
        threads: 2
        log_level: error
        upstreams:
          files: { url: "http://10.0.0.1:9000" }
        routes:
          - match: { path_prefix: /a }
            upstream: files
            mode: async
          - upstream: files
            mode: auto
            async_after: 1s
        """

    @Test func fileValuesWithoutOverrides() throws {
        let path = try writeTempFile(Self.fileYAML)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let c = try ConfigLoader.resolve(file: path, flags: .init(), environment: [:])
        #expect(c == (try ConfigLoader.load(path: path)))
        #expect(c.listen == SocketAddressSpec(host: "0.0.0.0", port: 7000))
        #expect(c.store == .sqlite(path: "/var/lib/cc.db"))
        #expect(c.routes.map(\.upstream) == ["files", "files"])
    }

    @Test func environmentOverridesFileAndFlagsOverrideEnvironment() throws {
        let path = try writeTempFile(Self.fileYAML)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let env = ["COATCHECK_LISTEN": "127.0.0.1:7001", "COATCHECK_STORE": "memory:"]

        let fromEnv = try ConfigLoader.resolve(file: path, flags: .init(), environment: env)
        #expect(fromEnv.listen == SocketAddressSpec(host: "127.0.0.1", port: 7001))
        #expect(fromEnv.store == .memory)
        #expect(fromEnv.threads == 2)
        #expect(fromEnv.logLevel == .error)

        let flags = ConfigOverrides(
            listen: "[::1]:7002", store: "redis://r:6379/1", asyncAfter: .milliseconds(300),
            adminListen: "127.0.0.1:0", threads: "auto", logLevel: "debug")
        let fromFlags = try ConfigLoader.resolve(file: path, flags: flags, environment: env)
        #expect(fromFlags.listen == SocketAddressSpec(host: "::1", port: 7002))
        #expect(fromFlags.store == .redis(RedisURL(host: "r", database: 1)))
        #expect(fromFlags.adminListen == SocketAddressSpec(host: "127.0.0.1", port: 0))
        #expect(fromFlags.threads == nil)
        #expect(fromFlags.logLevel == .debug)
        #expect(fromFlags.routes.map(\.asyncAfter) == [.milliseconds(300), .milliseconds(300)])
        // The file's routes stay: no upstream was overridden.
        #expect(fromFlags.routes.map(\.mode) == [.async, .auto])
    }

    @Test func configFileFromEnvironmentAndFlagWins() throws {
        let a = try writeTempFile(Self.fileYAML)
        let b = try writeTempFile(Self.fileYAML.replacingOccurrences(of: "7000", with: "7777"))
        defer {
            try? FileManager.default.removeItem(atPath: a)
            try? FileManager.default.removeItem(atPath: b)
        }
        let viaEnv = try ConfigLoader.resolve(file: nil, flags: .init(), environment: ["COATCHECK_CONFIG": a])
        #expect(viaEnv.listen.port == 7000)
        let viaFlag = try ConfigLoader.resolve(file: b, flags: .init(), environment: ["COATCHECK_CONFIG": a])
        #expect(viaFlag.listen.port == 7777)
    }

    @Test func upstreamFlagAloneBuildsTheDropInConfiguration() throws {
        let c = try ConfigLoader.resolve(
            file: nil, flags: .init(listen: "127.0.0.1:0", upstream: "http://127.0.0.1:9000/app/"), environment: [:])
        #expect(c.listen == SocketAddressSpec(host: "127.0.0.1", port: 0))
        #expect(c.upstreams.count == 1)
        let u = try #require(c.upstreams.first)
        #expect(u.name == "default")
        #expect(u.url == UpstreamURL(scheme: "http", host: "127.0.0.1", port: 9000, pathPrefix: "/app"))
        #expect(u.maxConcurrency == 256)
        #expect(c.routes.count == 1)
        let r = try #require(c.routes.first)
        #expect(r.upstream == "default")
        #expect(r.pathPrefix == "/")
        #expect(r.methods == [])
        #expect(r.mode == .auto)
        #expect(r.asyncAfter == .seconds(2))
        // Everything else is the defaults.
        #expect(c.limits == Limits())
        #expect(c.jobs == Jobs())
        #expect(c.store == Configuration().store)

        let quick = try ConfigLoader.resolve(
            file: nil, flags: .init(upstream: "https://b", asyncAfter: .seconds(5)), environment: [:])
        #expect(quick.routes.first?.asyncAfter == .seconds(5))
        #expect(quick.upstreams.first?.url.port == 443)
    }

    @Test func sidecarUpstreamFromEnvironmentReplacesFileRoutes() throws {
        // A file that only tunes limits is fine when the upstream comes from the environment.
        let limitsOnly = try writeTempFile("limits: { max_connections: 50 }\n")
        let full = try writeTempFile(Self.fileYAML)
        defer {
            try? FileManager.default.removeItem(atPath: limitsOnly)
            try? FileManager.default.removeItem(atPath: full)
        }
        let env = ["COATCHECK_UPSTREAM": "http://app:8000", "COATCHECK_CONFIG": limitsOnly]
        let c = try ConfigLoader.resolve(file: nil, flags: .init(), environment: env)
        #expect(c.limits.maxConnections == 50)
        #expect(c.upstreams.map(\.name) == ["default"])
        #expect(c.upstreams.first?.url == UpstreamURL(scheme: "http", host: "app", port: 8000, pathPrefix: ""))
        #expect(c.routes.map(\.mode) == [.auto])

        let replaced = try ConfigLoader.resolve(file: full, flags: .init(), environment: ["COATCHECK_UPSTREAM": "http://app:8000"])
        #expect(replaced.upstreams.map(\.name) == ["default"])
        #expect(replaced.routes.count == 1)
        #expect(replaced.listen.port == 7000)

        // The flag beats the variable.
        let flagged = try ConfigLoader.resolve(
            file: nil, flags: .init(upstream: "http://flag:1"), environment: ["COATCHECK_UPSTREAM": "http://env:2"])
        #expect(flagged.upstreams.first?.url.host == "flag")
    }

    @Test func withoutFileOrUpstreamSaysWhatIsNeeded() {
        let e = resolveError(env: ["COATCHECK_LISTEN": "0.0.0.0:1"])
        #expect(e?.file == "<flags>")
        #expect(e?.line == 1)
        #expect(e?.column == 1)
        #expect(e?.message.contains("--upstream URL") == true)
        #expect(e?.message.contains("--config FILE") == true)
        // An empty variable counts as unset.
        #expect(resolveError(env: ["COATCHECK_UPSTREAM": ""])?.file == "<flags>")
    }

    @Test func badFlagAndEnvironmentValuesNameTheirSource() {
        let up = "http://a"
        #expect(resolveError(flags: .init(upstream: "a:80"))?.description
            == "<flags>:1:1: --upstream: expected http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH], got \"a:80\"")
        #expect(resolveError(env: ["COATCHECK_UPSTREAM": "ftp://x"])?.description.hasPrefix("<env>:1:1: COATCHECK_UPSTREAM: ") == true)
        #expect(resolveError(flags: .init(listen: "8080", upstream: up))?.description.hasPrefix("<flags>:1:1: --listen: ") == true)
        #expect(resolveError(flags: .init(upstream: up), env: ["COATCHECK_LISTEN": "x"])?.description.hasPrefix("<env>:1:1: COATCHECK_LISTEN: ") == true)
        #expect(resolveError(flags: .init(upstream: up), env: ["COATCHECK_STORE": "mem"])?.description.hasPrefix("<env>:1:1: COATCHECK_STORE: ") == true)
        #expect(resolveError(flags: .init(upstream: up, store: "x"))?.message.hasPrefix("--store: ") == true)
        #expect(resolveError(flags: .init(upstream: up, adminListen: "x"))?.message.hasPrefix("--admin-listen: ") == true)
        #expect(resolveError(flags: .init(upstream: up, threads: "0"))?.message
            == "--threads: expected a positive integer or \"auto\", got \"0\"")
        #expect(resolveError(flags: .init(upstream: up, logLevel: "loud"))?.message.hasPrefix("--log-level: expected one of trace, debug") == true)
    }

    @Test func fileErrorsNameTheFile() throws {
        let missing = "/nonexistent/coatcheck-\(UUID().uuidString).yaml"
        let e = resolveError(file: missing)
        #expect(e?.file == missing)
        #expect(e?.message == "cannot open the configuration file: No such file or directory")

        let bad = try writeTempFile("listen: \"0.0.0.0:80\"\nlimitz: {}\n")
        defer { try? FileManager.default.removeItem(atPath: bad) }
        #expect(resolveError(file: bad, flags: .init(upstream: "http://a"))?.description
            == "\(bad):2:1: unknown key 'limitz' (did you mean 'limits'?)")
        #expect(resolveError(file: FileManager.default.temporaryDirectory.path)?.message.hasPrefix("cannot read the configuration file") == true)
    }
}
