import Config
import Foundation
import TestSupport
import Testing

/// The parse error of `yaml`, or nil if it parsed.
func parseError(_ yaml: String, environment: [String: String] = [:]) -> ConfigError? {
    do {
        _ = try ConfigLoader.parse(yaml: yaml, file: "coatcheck.yaml", environment: environment)
        return nil
    } catch {
        return error
    }
}

/// A valid file with one upstream `app` and one route, plus `extra` top-level lines.
func minimal(_ extra: String = "") -> String {
    """
    \(extra)
    upstreams:
      app: { url: "http://127.0.0.1:9000" }
    routes:
      - upstream: app
    """
}

@Suite struct ConfigLoaderTests {
    /// SPEC §2's example, verbatim (Tests/Fixtures, shared with ProxyTests).
    static let specExample = try! String(contentsOfFile: fixturePath("spec-example.yaml"), encoding: .utf8)

    @Test func specExampleParsesToItsValues() throws {
        // The example pairs ca_file with an http:// URL: accepted (the file is simply unused).
        let c = try ConfigLoader.parse(yaml: Self.specExample, file: "coatcheck.yaml")
        #expect(c.listen == SocketAddressSpec(host: "0.0.0.0", port: 8080))
        #expect(c.adminListen == SocketAddressSpec(host: "127.0.0.1", port: 8081))
        #expect(c.threads == nil)
        #expect(c.store == .sqlite(path: "./data/coatcheck.db"))
        #expect(c.publicURL == "https://api.example.com")
        #expect(c.limits.maxHeaderBytes == 16_384)
        #expect(c.limits.maxRequestBody == 8_388_608)
        #expect(c.limits.maxConnections == 10_000)
        #expect(c.limits.headerTimeout == .seconds(10))
        #expect(c.limits.bodyTimeout == .seconds(60))
        #expect(c.limits.idleTimeout == .seconds(60))
        #expect(c.limits.shutdownGrace == .seconds(30))
        #expect(c.jobs.path == "/jobs")
        #expect(c.jobs.resultTTL == .seconds(86_400))
        #expect(c.jobs.maxResultBody == 67_108_864)
        #expect(c.jobs.maxWait == .seconds(60))
        #expect(c.jobs.bindTo == "header:Authorization")
        #expect(c.jobs.dir == "./data")

        #expect(c.upstreams.count == 1)
        let u = try #require(c.upstream(named: "reports"))
        #expect(u.url == UpstreamURL(scheme: "http", host: "127.0.0.1", port: 9000, pathPrefix: ""))
        #expect(u.maxConcurrency == 4)
        #expect(u.maxQueued == 10_000)
        #expect(u.connectTimeout == .seconds(2))
        #expect(u.timeout == .seconds(900))
        #expect(u.syncTimeout == .seconds(60))
        #expect(u.caFile == "/etc/ssl/internal.pem")
        #expect(u.retry == RetryPolicy(attempts: 1, backoff: .seconds(1), maxBackoff: .seconds(60)))

        #expect(c.routes.count == 2)
        #expect(c.routes[0].pathPrefix == "/reports")
        #expect(c.routes[0].methods == ["POST"])
        #expect(c.routes[0].host == nil)
        #expect(c.routes[0].upstream == "reports")
        #expect(c.routes[0].mode == .async)
        #expect(c.routes[1].pathPrefix == "/")
        #expect(c.routes[1].methods == [])
        #expect(c.routes[1].mode == .auto)
        #expect(c.routes[1].asyncAfter == .seconds(2))
    }

    @Test func defaults() throws {
        let c = try ConfigLoader.parse(yaml: minimal(), file: "f.yaml")
        #expect(c.listen == SocketAddressSpec(host: "0.0.0.0", port: 8080))
        #expect(c.adminListen == nil)
        #expect(c.threads == nil)
        #expect(c.store == .sqlite(path: "./data/coatcheck.db"))
        #expect(c.publicURL == nil)
        #expect(c.accessLog == true)
        #expect(c.logLevel == .info)
        #expect(c.limits.maxHeaderBytes == 16 * 1024)
        #expect(c.limits.maxRequestBody == 8 * 1024 * 1024)
        #expect(c.limits.maxConnections == 10_000)
        #expect(c.limits.headerTimeout == .seconds(10))
        #expect(c.limits.bodyTimeout == .seconds(60))
        #expect(c.limits.idleTimeout == .seconds(60))
        #expect(c.limits.shutdownGrace == .seconds(30))
        #expect(c.jobs.path == "/jobs")
        #expect(c.jobs.resultTTL == .seconds(24 * 3600))
        #expect(c.jobs.maxResultBody == 64 * 1024 * 1024)
        #expect(c.jobs.maxWait == .seconds(60))
        #expect(c.jobs.bindTo == nil)
        #expect(c.jobs.dir == "./data")
        let u = try #require(c.upstreams.first)
        #expect(u.name == "app")
        #expect(u.url == UpstreamURL(scheme: "http", host: "127.0.0.1", port: 9000, pathPrefix: ""))
        #expect(u.maxConcurrency == 256)
        #expect(u.maxQueued == 10_000)
        #expect(u.connectTimeout == .seconds(2))
        #expect(u.timeout == .seconds(15 * 60))
        #expect(u.syncTimeout == .seconds(60))
        #expect(u.caFile == nil)
        #expect(u.retry == RetryPolicy(attempts: 1, backoff: .seconds(1), maxBackoff: .seconds(60)))
        let r = try #require(c.routes.first)
        #expect(r.pathPrefix == "/")
        #expect(r.methods == [])
        #expect(r.host == nil)
        #expect(r.upstream == "app")
        #expect(r.mode == .sync)
        #expect(r.asyncAfter == .seconds(2))
        #expect(r.callback == nil)
    }

    @Test func nullSectionsMeanDefaults() throws {
        let c = try ConfigLoader.parse(yaml: minimal("limits:\njobs: ~\nadmin_listen:\n"), file: "f.yaml")
        #expect(c.limits == Limits())
        #expect(c.jobs == Jobs())
        #expect(c.adminListen == nil)
    }

    @Test func extraKeys() throws {
        let c = try ConfigLoader.parse(yaml: minimal("access_log: off\nlog_level: DEBUG\nthreads: 3"), file: "f.yaml")
        #expect(c.accessLog == false)
        #expect(c.logLevel == .debug)
        #expect(c.threads == 3)
        let d = try ConfigLoader.parse(yaml: minimal("access_log: stdout\nlog_level: warn"), file: "f.yaml")
        #expect(d.accessLog == true)
        #expect(d.logLevel == .warning)
        #expect(parseError(minimal("access_log: yes"))?.message == "access_log: expected stdout or off, got \"yes\"")
    }

    // MARK: - Error locations

    @Test func unknownTopLevelKey() {
        let e = parseError("listen: \"0.0.0.0:8080\"\nlissen: x\n" + minimal())
        #expect(e?.description == "coatcheck.yaml:2:1: unknown key 'lissen' (did you mean 'listen'?)")
    }

    @Test func unknownNestedKey() {
        let yaml = """
            listen: "0.0.0.0:8080"
            threads: 2
            limits:
              header_timeout: 10s

              body_timeout: 60s
                max_conections: 5
            """
        // Line 7 is deliberately over-indented: that is a YAML error, not our unknown key.
        #expect(parseError(yaml)?.message.hasPrefix("YAML syntax error") == true)

        let fixed = yaml.replacingOccurrences(of: "    max_conections", with: "  max_conections") + "\n" + minimal()
        let e = parseError(fixed)
        #expect(e?.description == "coatcheck.yaml:7:3: unknown key 'max_conections' in limits (did you mean 'max_connections'?)")
    }

    @Test func unknownKeyDeepInsideAFlowMapping() {
        let yaml = """
            upstreams:
              app:
                url: "http://127.0.0.1:9000"
                retry: { attempts: 2, bakcoff: 1s }
            routes:
              - upstream: app
            """
        #expect(parseError(yaml)?.description
            == "coatcheck.yaml:4:27: unknown key 'bakcoff' in upstreams.app.retry (did you mean 'backoff'?)")
    }

    @Test func unknownKeyInARoute() {
        let yaml = """
            upstreams:
              app: { url: "http://a" }
            routes:
              - upstream: app
              - upstream: app
                match: { path: "/x" }
            """
        #expect(parseError(yaml)?.description == "coatcheck.yaml:6:14: unknown key 'path' in routes[1].match")
    }

    @Test func routeNamesAreLabelsAndMustBeUnique() throws {
        let yaml = """
            upstreams:
              app: { url: "http://a" }
            routes:
              - name: reports
                match: { path_prefix: "/reports" }
                upstream: app
              - match: { path_prefix: "/other" }
                upstream: app
              - name: reports
                upstream: app
            """
        #expect(parseError(yaml)?.description == "coatcheck.yaml:9:11: routes[2].name: 'reports' is already the name of routes[0]")
        let c = try ConfigLoader.parse(yaml: yaml.replacingOccurrences(of: "  - name: reports\n    upstream", with: "  - upstream"), file: "f")
        #expect(c.routes.map(\.label) == ["reports", "/other", "/"])
    }

    /// A label is the name, else path_prefix: two routes on one prefix
    /// without names, or a name that is another route's prefix, would count
    /// as one route in metrics.
    @Test(arguments: [
        ("  - match: { path_prefix: \"/x\", methods: [POST] }\n    upstream: app\n    mode: async",
         "coatcheck.yaml:6:5: routes[1]: labelled '/x' like routes[0]"),
        ("  - name: \"/x\"\n    match: { path_prefix: \"/y\" }\n    upstream: app",
         "coatcheck.yaml:6:5: routes[1]: labelled '/x' like routes[0]"),
    ])
    func routesMayNotShareALabel(second: String, error: String) throws {
        let yaml = """
            upstreams:
              app: { url: "http://a" }
            routes:
              - match: { path_prefix: "/x", methods: [GET] }
                upstream: app
            \(second)
            """
        let message = parseError(yaml)?.description ?? ""
        #expect(message.hasPrefix(error), "\(message)")
        #expect(message.hasSuffix("give one of them a name"))
        // Named apart, the same routes are fine.
        #expect(throws: Never.self) {
            try ConfigLoader.parse(yaml: yaml.replacingOccurrences(of: "  - match: { path_prefix: \"/x\", methods: [GET] }",
                                                                   with: "  - name: reads\n    match: { path_prefix: \"/x\", methods: [GET] }"),
                                   file: "f")
        }
    }

    @Test func badDurationPointsAtTheValue() {
        let e = parseError(minimal("limits:\n  body_timeout: 10 seconds"))
        #expect(e?.line == 2)
        #expect(e?.column == 17)
        #expect(e?.message == "limits.body_timeout: expected a duration like 250ms, 2s, 15m, 24h, got \"10 seconds\"")
    }

    @Test func zeroTimeoutIsRefusedButZeroGraceIsFine() throws {
        #expect(parseError(minimal("limits: { idle_timeout: 0s }"))?.message == "limits.idle_timeout: must be greater than 0s")
        let c = try ConfigLoader.parse(yaml: minimal("limits: { shutdown_grace: 0s }"), file: "f")
        #expect(c.limits.shutdownGrace == .zero)
    }

    @Test func badSize() {
        let e = parseError(minimal("limits:\n  max_request_body: 8MB!"))
        #expect(e?.description == "coatcheck.yaml:2:21: limits.max_request_body: expected a size like 512, 16KiB, 8MiB, got \"8MB!\"")
    }

    @Test func routeNamingAnUnknownUpstream() {
        let yaml = """
            routes:
              - match: { path_prefix: "/" }
                upstream: reprots
            upstreams:
              reports: { url: "http://127.0.0.1:9000" }
            """
        #expect(parseError(yaml)?.description
            == "coatcheck.yaml:3:15: routes[0].upstream: unknown upstream 'reprots'; defined: 'reports'")
    }

    @Test func yamlSyntaxErrorIsOneLine() throws {
        let e = try #require(parseError("listen: \"0.0.0.0:8080\nthreads: 2\n"))
        #expect(e.file == "coatcheck.yaml")
        #expect(e.line >= 1 && e.column >= 1)
        #expect(e.message.hasPrefix("YAML syntax error: "))
        #expect(!e.description.contains("\n"))

        let tab = try #require(parseError("limits:\n\tbody_timeout: 1s\n"))
        #expect(tab.line == 2)
        #expect(!tab.description.contains("\n"))
    }

    /// Found by the config fuzz target: a line break inside a YAML string
    /// (a value, a key) made the error two lines.
    @Test func lineBreaksInTheYAMLsStringsStayOnOneLine() throws {
        let value = try #require(parseError(minimal("listen: \"a\\nb:80\"")))
        #expect(value.message == "listen: expected HOST:PORT, e.g. 0.0.0.0:8080 or [::1]:8080, got \"a\\nb:80\"")
        let key = try #require(parseError(minimal("\"lis\\r\\nten\": x")))
        #expect(key.message.hasPrefix("unknown key 'lis\\r\\nten'"))
        let other = try #require(parseError(minimal("listen: \"a\\u2028b\\x85c:80\"")))
        #expect(other.message.hasSuffix("got \"a\\u{2028}b\\u{85}c:80\""))
        for e in [value, key, other] {
            let oneLine = !e.description.contains { $0.isNewline }
            #expect(oneLine, "\(e.description.debugDescription)")
        }
    }

    @Test func duplicateKey() {
        // Yams reports the first occurrence.
        let e = parseError(minimal("threads: 2\nthreads: 3"))
        #expect(e?.line == 1)
        #expect(e?.column == 1)
        #expect(e?.message == "duplicate key 'threads'")
    }

    @Test func emptyAndNonMappingDocuments() {
        #expect(parseError("")?.description.hasPrefix("coatcheck.yaml:1:1: the configuration is empty") == true)
        #expect(parseError("# only a comment\n")?.line == 1)
        #expect(parseError("- a\n- b\n")?.message == "expected a mapping of keys at the top level, got a list")
        #expect(parseError("just words")?.message == "expected a mapping of keys at the top level, got \"just words\"")
    }

    @Test func upstreamsAndRoutesAreRequired() {
        let noRoutes = parseError("upstreams:\n  app: { url: \"http://a\" }\n")
        #expect(noRoutes?.description == "coatcheck.yaml:1:1: no routes: at least one route is required under 'routes'")
        let noUpstreams = parseError("listen: \":8080\"\n")
        #expect(noUpstreams?.description == "coatcheck.yaml:1:1: no upstreams: at least one upstream is required under 'upstreams'")
        let emptyRoutes = parseError("upstreams:\n  app: { url: \"http://a\" }\nroutes: []\n")
        #expect(emptyRoutes?.description == "coatcheck.yaml:3:9: routes: at least one route is required")
    }

    @Test func missingRequiredKeys() {
        #expect(parseError("upstreams:\n  app: { max_queued: 1 }\nroutes:\n  - upstream: app\n")?.description
            == "coatcheck.yaml:2:3: upstreams.app: missing key 'url'")
        #expect(parseError("upstreams:\n  app: { url: \"http://a\" }\nroutes:\n  - mode: sync\n")?.description
            == "coatcheck.yaml:4:5: routes[0]: missing key 'upstream'")
    }

    // MARK: - Values

    static let addresses: [(String, SocketAddressSpec)] = [
        ("\"0.0.0.0:8080\"", SocketAddressSpec(host: "0.0.0.0", port: 8080)),
        ("\"127.0.0.1:0\"", SocketAddressSpec(host: "127.0.0.1", port: 0)),
        ("\"[::1]:8443\"", SocketAddressSpec(host: "::1", port: 8443)),
        ("\"[::]:80\"", SocketAddressSpec(host: "::", port: 80)),
        ("localhost:65535", SocketAddressSpec(host: "localhost", port: 65535)),
        ("\":9000\"", SocketAddressSpec(host: "0.0.0.0", port: 9000)),
    ]

    @Test(arguments: addresses)
    func listenAddresses(text: String, expected: SocketAddressSpec) throws {
        let c = try ConfigLoader.parse(yaml: minimal("listen: \(text)"), file: "f")
        #expect(c.listen == expected)
    }

    @Test(arguments: ["8080", "\"0.0.0.0\"", "\"0.0.0.0:65536\"", "\"0.0.0.0:-1\"", "\"::1:80\"", "\"[::1]80\"", "\"a b:80\"", "\"h:\""])
    func badListenAddresses(text: String) {
        let e = parseError(minimal("listen: \(text)"))
        #expect(e?.line == 1)
        #expect(e?.column == 9)
        #expect(e?.message.hasPrefix("listen: ") == true)
    }

    static let urls: [(String, UpstreamURL)] = [
        ("http://127.0.0.1:9000", UpstreamURL(scheme: "http", host: "127.0.0.1", port: 9000, pathPrefix: "")),
        ("http://backend", UpstreamURL(scheme: "http", host: "backend", port: 80, pathPrefix: "")),
        ("https://API.example.com/", UpstreamURL(scheme: "https", host: "api.example.com", port: 443, pathPrefix: "")),
        ("HTTPS://h:8443/v1/api/", UpstreamURL(scheme: "https", host: "h", port: 8443, pathPrefix: "/v1/api")),
        ("http://[::1]:9000/x", UpstreamURL(scheme: "http", host: "::1", port: 9000, pathPrefix: "/x")),
        ("http://[fe80::1]", UpstreamURL(scheme: "http", host: "fe80::1", port: 80, pathPrefix: "")),
    ]

    @Test(arguments: urls)
    func upstreamURLs(text: String, expected: UpstreamURL) throws {
        let yaml = "upstreams:\n  app: { url: \"\(text)\" }\nroutes:\n  - upstream: app\n"
        let c = try ConfigLoader.parse(yaml: yaml, file: "f")
        #expect(c.upstreams.first?.url == expected)
        #expect(UpstreamURL(parsing: text) == expected)
    }

    static let badURLs: [(String, String)] = [
        ("ftp://h", "expected http://"), ("127.0.0.1:9000", "expected http://"), ("http://", "missing or invalid host"),
        ("http://h/x?y=1", "a query"), ("http://h/#f", "a fragment"), ("http://u:p@h", "credentials"),
        ("http://h:0", "port must be 1-65535"), ("http://h:70000", "port must be"), ("http://h:x", "port must be"),
        ("http://::1:80", "need brackets"), ("http://h /x", "spaces"),
    ]

    @Test(arguments: badURLs)
    func badUpstreamURLs(text: String, fragment: String) throws {
        let yaml = "upstreams:\n  app:\n    url: \"\(text)\"\nroutes:\n  - upstream: app\n"
        let e = try #require(parseError(yaml))
        #expect(e.line == 3)
        #expect(e.column == 10)
        #expect(e.message.hasPrefix("upstreams.app.url: "))
        #expect(e.message.contains(fragment), "\(e.message)")
    }

    @Test func threadsValues() throws {
        #expect(try ConfigLoader.parse(yaml: minimal("threads: auto"), file: "f").threads == nil)
        #expect(try ConfigLoader.parse(yaml: minimal("threads: 8"), file: "f").threads == 8)
        #expect(parseError(minimal("threads: 0"))?.description
            == "coatcheck.yaml:1:10: threads: expected a positive integer or \"auto\", got \"0\"")
        #expect(parseError(minimal("threads: [1]"))?.message == "threads: expected a positive integer or \"auto\", got a list")
    }

    @Test func storeValues() throws {
        #expect(try ConfigLoader.parse(yaml: minimal("store: \"memory:\""), file: "f").store == .memory)
        // Unquoted, `memory:` is a YAML mapping: the syntax error names the line.
        #expect(parseError(minimal("store: memory:"))?.description.hasPrefix("coatcheck.yaml:1:") == true)
        #expect(try ConfigLoader.parse(yaml: minimal("store: \"redis://r:6379/0\""), file: "f").store == .redis(RedisURL(host: "r")))
        #expect(parseError(minimal("store: \"postgres://x\""))?.message.hasPrefix("store: expected \"memory:\"") == true)
        #expect(parseError(minimal("store: \"sqlite:\""))?.message.hasPrefix("store: expected") == true)
    }

    /// SPEC §2: `redis://[:PASSWORD@]HOST:PORT/DB`, and the forms redis-cli takes.
    @Test(arguments: [
        ("redis://127.0.0.1:6390/2", RedisURL(host: "127.0.0.1", port: 6390, database: 2)),
        ("redis://Redis.Internal", RedisURL(host: "redis.internal")),
        ("redis://r:6379/", RedisURL(host: "r")),
        ("redis://:s3cret@r:6379/1", RedisURL(host: "r", database: 1, password: "s3cret")),
        ("redis://s3cret@r", RedisURL(host: "r", password: "s3cret")),
        ("redis://app:p%40ss%3Aw@r:7000/0", RedisURL(host: "r", port: 7000, username: "app", password: "p@ss:w")),
        ("redis://:a@b@r/0", RedisURL(host: "r", password: "a@b")),
        ("redis://[::1]:6380/3", RedisURL(host: "::1", port: 6380, database: 3)),
    ])
    func redisStoreURLs(_ url: String, _ expected: RedisURL) throws {
        let c = try ConfigLoader.parse(yaml: minimal("store: \"\(url)\""), file: "f")
        #expect(c.store == .redis(expected))
    }

    /// A bad redis URL is one line naming the key, and never shows the password.
    @Test(arguments: [
        ("redis://:hunter2@r:0/1", "port must be 1-65535"),
        ("redis://:hunter2@r:6379/x", "the database must be a number"),
        ("redis://:hunter2@/0", "missing or invalid host"),
        ("redis://:hunter2@r/0?timeout=1", "no query or fragment"),
        ("redis://:hunter2@::1/0", "IPv6 addresses need brackets"),
        ("redis://:hunter2%zz@r/0", "bad percent-encoding"),
        ("rediss://:hunter2@r/0", "not supported"),
    ])
    func badRedisURLsHideThePassword(_ url: String, _ problem: String) throws {
        let e = try #require(parseError(minimal("store: \"\(url)\"")))
        #expect(e.description.hasPrefix("coatcheck.yaml:1:8: store: "))
        #expect(e.message.contains(problem), "\(e.message)")
        #expect(!e.description.contains("hunter2"))
        #expect(!e.description.contains("\n"))
    }

    @Test func redisSettings() throws {
        let c = try ConfigLoader.parse(
            yaml: minimal("store: \"redis://r/0\"\nredis:\n  lease: 5s\n  prefix: \"cc:prod\"\n  wait_replicas: 1"), file: "f")
        #expect(c.redis.lease == .seconds(5))
        #expect(c.redis.prefix == "cc:prod")
        #expect(c.redis.waitReplicas == 1)
        #expect(Configuration().redis == RedisSettings())
        #expect(RedisSettings().lease == .seconds(30) && RedisSettings().prefix == "coatcheck" && RedisSettings().waitReplicas == 0)
        #expect(parseError(minimal("redis:\n  lease: 500ms"))?.description == "coatcheck.yaml:2:10: redis.lease: must be at least 1s")
        #expect(parseError(minimal("redis:\n  prefix: \"a b\""))?.message.hasPrefix("redis.prefix: expected 1-64 letters") == true)
        #expect(parseError(minimal("redis:\n  wait_replicas: -1"))?.message.hasPrefix("redis.wait_replicas: expected a non-negative") == true)
        #expect(parseError(minimal("redis:\n  leese: 5s"))?.description.hasPrefix("coatcheck.yaml:2:3: ") == true)
        // Logged as configured, the password written as ***.
        let redacted = StoreLocation.redis(RedisURL(host: "r", database: 1, username: "app", password: "hunter2"))
        #expect(redacted.description == "redis://app:***@r:6379/1")
    }

    @Test func publicURLLosesItsTrailingSlash() throws {
        let c = try ConfigLoader.parse(yaml: minimal("public_url: \"https://api.example.com/base/\""), file: "f")
        #expect(c.publicURL == "https://api.example.com/base")
        #expect(parseError(minimal("public_url: api.example.com"))?.message.hasPrefix("public_url: expected http://") == true)
    }

    @Test func jobsValidation() throws {
        let c = try ConfigLoader.parse(yaml: minimal("jobs: { path: /_coatcheck/jobs, max_wait: 0s }"), file: "f")
        #expect(c.jobs.path == "/_coatcheck/jobs")
        #expect(c.jobs.maxWait == .zero)
        #expect(parseError(minimal("jobs: { path: /jobs/ }"))?.message.hasPrefix("jobs.path: expected a path that starts with / and does not end with /") == true)
        #expect(parseError(minimal("jobs: { path: jobs }"))?.message.hasPrefix("jobs.path: ") == true)
        #expect(parseError(minimal("jobs: { path: / }"))?.message.hasPrefix("jobs.path: ") == true)
        #expect(parseError(minimal("jobs: { bind_to: Authorization }"))?.message.hasPrefix("jobs.bind_to: expected header:NAME") == true)
        #expect(parseError(minimal("jobs: { max_result_body: 0 }"))?.message == "jobs.max_result_body: must be at least 1 byte")
    }

    @Test func upstreamLimitsValidation() {
        func up(_ body: String) -> String {
            "upstreams:\n  app:\n    url: \"https://a\"\n    \(body)\nroutes:\n  - upstream: app\n"
        }
        #expect(parseError(up("max_concurrency: 0"))?.description
            == "coatcheck.yaml:4:22: upstreams.app.max_concurrency: expected a positive integer, got \"0\"")
        #expect(parseError(up("max_queued: -1"))?.message == "upstreams.app.max_queued: expected a non-negative integer, got \"-1\"")
        #expect(parseError(up("retry: { attempts: 0 }"))?.message == "upstreams.app.retry.attempts: expected a positive integer, got \"0\"")
        #expect(parseError(up("retry: { backoff: 5s, max_backoff: 1s }"))?.message
            == "upstreams.app.retry.max_backoff: must be at least backoff (5s)")
        #expect(parseError(up("sync_timeout: soon"))?.message.hasPrefix("upstreams.app.sync_timeout: expected a duration") == true)
        #expect(parseError(up("max_queued: 10_000")) == nil)
        #expect(parseError("upstreams:\n  \"a b\": { url: \"http://a\" }\nroutes:\n  - upstream: a\n")?.line == 2)
    }

    @Test func retryBackoffAloneRaisesTheCap() throws {
        let yaml = "upstreams:\n  app:\n    url: \"http://a\"\n    retry: { attempts: 3, backoff: 2m }\nroutes:\n  - upstream: app\n"
        let u = try #require(try ConfigLoader.parse(yaml: yaml, file: "f").upstreams.first)
        #expect(u.retry == RetryPolicy(attempts: 3, backoff: .seconds(120), maxBackoff: .seconds(120)))
    }

    @Test func routeMatching() throws {
        let yaml = """
            upstreams:
              app: { url: "http://a" }
            routes:
              - match: { path_prefix: /api, methods: [post, Get, POST], host: API.Example.com }
                upstream: app
                mode: auto
                async_after: 500ms
              - match: { methods: DELETE }
                upstream: app
            """
        let c = try ConfigLoader.parse(yaml: yaml, file: "f")
        #expect(c.routes[0].pathPrefix == "/api")
        #expect(c.routes[0].methods == ["POST", "GET"])
        #expect(c.routes[0].host == "api.example.com")
        #expect(c.routes[0].mode == .auto)
        #expect(c.routes[0].asyncAfter == .milliseconds(500))
        #expect(c.routes[1].methods == ["DELETE"])
        #expect(c.routes[1].pathPrefix == "/")
    }

    @Test func routeValidation() {
        func route(_ body: String) -> String {
            "upstreams:\n  app: { url: \"http://a\" }\nroutes:\n  - upstream: app\n    \(body)\n"
        }
        #expect(parseError(route("mode: later"))?.description
            == "coatcheck.yaml:5:11: routes[0].mode: expected sync, async or auto, got \"later\"")
        #expect(parseError(route("match: { path_prefix: api }"))?.message == "routes[0].match.path_prefix: expected a path starting with /, got \"api\"")
        #expect(parseError(route("match: { methods: [\"GET POST\"] }"))?.message
            == "routes[0].match.methods[0]: expected a method name like POST, got \"GET POST\"")
        #expect(parseError(route("match: { methods: {} }"))?.message == "routes[0].match.methods: expected a list, got a mapping")
        #expect(parseError(route("async_after: 2"))?.message.hasPrefix("routes[0].async_after: expected a duration") == true)
        #expect(parseError("upstreams:\n  app: { url: \"http://a\" }\nroutes:\n  - app\n")?.description
            == "coatcheck.yaml:4:5: routes[0]: expected a mapping with 'match', 'upstream' and 'mode', got \"app\"")
        #expect(parseError("upstreams:\n  app: { url: \"http://a\" }\nroutes:\n  app: {}\n")?.message
            == "routes: expected a list of routes, got a mapping")
    }

    // MARK: - Callbacks

    func callbackYAML(_ body: String, mode: String = "async") -> String {
        "upstreams:\n  app: { url: \"http://a\" }\nroutes:\n  - upstream: app\n    mode: \(mode)\n    callback:\n\(body)\n"
    }

    @Test func callbackWithLiteralSecret() throws {
        let caFile = try writeTempFile("-----BEGIN CERTIFICATE-----\n", suffix: ".pem")
        defer { unlink(caFile) }
        let yaml = callbackYAML("""
                  allow: ["https://hooks.example.com/"]
                  secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
                  retry: { attempts: 3, backoff: 1s, max_backoff: 1m }
                  timeout: 5s
                  max_concurrency: 8
                  ca_file: \(caFile)
            """)
        let cb = try #require(try ConfigLoader.parse(yaml: yaml, file: "f").routes[0].callback)
        #expect(cb.allow == [CallbackURL.parse("https://hooks.example.com/")!])
        #expect(cb.secrets == ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
        #expect(cb.secretEnv == nil)
        #expect(cb.retry == RetryPolicy(attempts: 3, backoff: .seconds(1), maxBackoff: .seconds(60)))
        #expect(cb.timeout == .seconds(5))
        #expect(cb.maxConcurrency == 8)
        #expect(cb.caFile == caFile)
    }

    @Test func callbackDefaultsAndSecretEnv() throws {
        let yaml = callbackYAML("      allow: https://hooks.example.com/\n      secret_env: HOOK_SECRET")
        let c = try ConfigLoader.parse(yaml: yaml, file: "f", environment: ["HOOK_SECRET": "raw-secret"])
        let cb = try #require(c.routes[0].callback)
        #expect(cb.allow == [CallbackURL.parse("https://hooks.example.com/")!])
        #expect(cb.secrets == ["raw-secret"])
        #expect(cb.secretEnv == "HOOK_SECRET")
        #expect(cb.retry == RetryPolicy(attempts: 8, backoff: .seconds(5), maxBackoff: .seconds(3600)))
        #expect(cb.timeout == .seconds(30))
        #expect(cb.maxConcurrency == 64)

        #expect(parseError(yaml)?.description
            == "coatcheck.yaml:8:19: routes[0].callback.secret_env: environment variable HOOK_SECRET is not set")
    }

    @Test func callbackSecretsRotate() throws {
        let yaml = callbackYAML("      allow: [\"https://h/\"]\n      secrets: [\"new-one\", \"whsec_b2xk\"]")
        let cb = try #require(try ConfigLoader.parse(yaml: yaml, file: "f").routes[0].callback)
        #expect(cb.secrets == ["new-one", "whsec_b2xk"])
        #expect(parseError(callbackYAML("      allow: [\"https://h/\"]\n      secrets: []"))?.message
            == "routes[0].callback.secrets: expected at least one secret")
    }

    @Test func callbackSecretsAreExclusiveAndRequired() {
        let yaml = callbackYAML("      allow: [\"https://h/\"]\n      secret: s\n      secret_env: HOOK_SECRET")
        #expect(parseError(yaml, environment: ["HOOK_SECRET": "x"])?.description
            == "coatcheck.yaml:9:7: routes[0].callback: secret, secret_env and secrets are mutually exclusive")
        #expect(parseError(callbackYAML("      allow: [\"https://h/\"]"))?.message.hasPrefix(
            "routes[0].callback: missing key 'secret'") == true)
        #expect(parseError(callbackYAML("      allow: [\"https://h/\"]\n      secret: \"\""))?.description
            == "coatcheck.yaml:8:15: routes[0].callback.secret: must not be empty")
        #expect(parseError(callbackYAML("      allow: [\"https://h/\"]\n      secret: whsec_not*base64"))?.description
            == "coatcheck.yaml:8:15: routes[0].callback.secret: a whsec_ secret must be base64 after the prefix")
    }

    @Test func callbackNeedsValidSettings() {
        #expect(parseError(callbackYAML("      secret: s"))?.message.hasPrefix("routes[0].callback: missing key 'allow'") == true)
        #expect(parseError(callbackYAML("      allow: []"))?.message == "routes[0].callback.allow: expected at least one URL prefix")
        #expect(parseError(callbackYAML("      allow: [\"hooks.example.com\"]"))?.message.hasPrefix("routes[0].callback.allow[0]: expected http") == true)
        #expect(parseError(callbackYAML("      allow: [\"https://u@h/\"]\n      secret: s"))?.message.hasPrefix("routes[0].callback.allow[0]: expected http") == true)
        #expect(parseError(callbackYAML("      allow: [\"https://h/\"]\n      secret: s\n      max_concurrency: 0"))?.message.hasPrefix("routes[0].callback.max_concurrency") == true)
        #expect(parseError(callbackYAML("      allow: [\"https://h/\"]\n      secret: s\n      ca_file: /nonexistent.pem"))?.description
            == "coatcheck.yaml:9:16: routes[0].callback.ca_file: cannot read /nonexistent.pem")
        #expect(parseError(callbackYAML("      allow: [\"https://h/\"]\n      secret: s", mode: "sync"))?.description
            == "coatcheck.yaml:6:5: routes[0].callback: callbacks need a job: the route's mode must be async or auto")
    }

    func callbackError(_ body: String, mode: String = "async", environment: [String: String] = [:]) -> String? {
        parseError(callbackYAML(body, mode: mode), environment: environment)?.description
    }

    @Test func callbackDefaultsWithOnlyAllowAndSecret() throws {
        let yaml = callbackYAML("      allow: [\"https://h/a\", \"http://[::1]:9000/\"]\n      secret: s", mode: "auto")
        let cb = try #require(try ConfigLoader.parse(yaml: yaml, file: "f").routes[0].callback)
        #expect(cb == {
            var d = Callback()
            d.allow = [CallbackURL.parse("https://h/a")!, CallbackURL.parse("http://[::1]:9000/")!]
            d.secrets = ["s"]
            return d
        }())
        #expect(cb.retry == RetryPolicy(attempts: 8, backoff: .seconds(5), maxBackoff: .seconds(3600)))
        #expect(cb.timeout == .seconds(30) && cb.maxConcurrency == 64 && cb.caFile == nil && cb.secretEnv == nil)
        let partial = callbackYAML("      allow: [\"https://h/\"]\n      secret: s\n      retry: { attempts: 2 }")
        #expect(try ConfigLoader.parse(yaml: partial, file: "f").routes[0].callback?.retry
            == RetryPolicy(attempts: 2, backoff: .seconds(5), maxBackoff: .seconds(3600)), "the callback's defaults, not an upstream's")
    }

    @Test func callbackOnARouteWithoutModeIsRefused() {
        let yaml = "upstreams:\n  app: { url: \"http://a\" }\nroutes:\n  - upstream: app\n    callback:\n      allow: [\"https://h/\"]\n      secret: s\n"
        #expect(parseError(yaml)?.description
            == "coatcheck.yaml:5:5: routes[0].callback: callbacks need a job: the route's mode must be async or auto")
    }

    @Test func callbackSecretErrorsPointAtTheValue() {
        let allow = "      allow: [\"https://h/\"]\n"
        #expect(callbackError(allow + "      secret: whsec_")
            == "coatcheck.yaml:8:15: routes[0].callback.secret: a whsec_ secret must be base64 after the prefix")
        #expect(callbackError(allow + "      secret: whsec_abc")
            == "coatcheck.yaml:8:15: routes[0].callback.secret: a whsec_ secret must be base64 after the prefix")
        #expect(callbackError(allow + "      secrets: [\"ok\", \"whsec_!!!!\"]")
            == "coatcheck.yaml:8:23: routes[0].callback.secrets[1]: a whsec_ secret must be base64 after the prefix")
        #expect(callbackError(allow + "      secrets: [\"ok\", \"\"]")
            == "coatcheck.yaml:8:23: routes[0].callback.secrets[1]: must not be empty")
        #expect(callbackError(allow + "      secret_env: S", environment: ["S": "whsec_%%%%"])
            == "coatcheck.yaml:8:19: routes[0].callback.secret_env: a whsec_ secret must be base64 after the prefix")
        #expect(callbackError(allow + "      secret_env: S", environment: ["S": ""])
            == "coatcheck.yaml:8:19: routes[0].callback.secret_env: environment variable S is not set")
        #expect(callbackError(allow + "      secret: s\n      secrets: [t]")
            == "coatcheck.yaml:9:7: routes[0].callback: secret, secret_env and secrets are mutually exclusive")
        #expect(callbackError(allow + "      secret: [s]")?.hasPrefix("coatcheck.yaml:8:15: routes[0].callback.secret: expected a string") == true)
    }

    @Test func callbackSettingErrors() throws {
        let head = "      allow: [\"https://h/\"]\n      secret: s\n"
        #expect(callbackError(head + "      timeout: 0s")?.hasPrefix("coatcheck.yaml:9:16: routes[0].callback.timeout:") == true)
        #expect(callbackError(head + "      timeout: soon")?.hasPrefix("coatcheck.yaml:9:16: routes[0].callback.timeout: expected a duration") == true)
        #expect(callbackError(head + "      max_concurrency: -1")
            == "coatcheck.yaml:9:24: routes[0].callback.max_concurrency: expected a positive integer, got \"-1\"")
        #expect(callbackError(head + "      max_concurrency: many")?.hasPrefix("coatcheck.yaml:9:24: routes[0].callback.max_concurrency") == true)
        #expect(callbackError(head + "      retry: { attempts: 0 }")?.hasPrefix("coatcheck.yaml:9:26: routes[0].callback.retry.attempts") == true)
        #expect(callbackError(head + "      retry: { backoff: 1m, max_backoff: 1s }")
            == "coatcheck.yaml:9:42: routes[0].callback.retry.max_backoff: must be at least backoff (1m)")
        #expect(callbackError(head + "      ca_file: /tmp")
            == "coatcheck.yaml:9:16: routes[0].callback.ca_file: cannot read /tmp", "a directory is not a CA file")
        #expect(callbackError(head + "      url: https://h/")
            == "coatcheck.yaml:9:7: unknown key 'url' in routes[0].callback")
        #expect(callbackError("      allow: \"https://h/\"\n      secret: s") == nil, "a single prefix may be a scalar")
    }

    @Test func callbackAllowPrefixErrorsSayWhy() {
        func allowError(_ prefix: String) -> String? { callbackError("      allow: [\"\(prefix)\"]\n      secret: s") }
        #expect(allowError("https://h/x?token=1")
            == "coatcheck.yaml:7:15: routes[0].callback.allow[0]: expected http(s)://HOST[:PORT][/PATH] without a query, got \"https://h/x?token=1\"")
        #expect(allowError("https://h:0/")
            == "coatcheck.yaml:7:15: routes[0].callback.allow[0]: expected http(s)://HOST[:PORT][/PATH]: the port must be 1-65535, got \"https://h:0/\"")
        #expect(allowError("https://u@h/")?.contains("no userinfo (@) is allowed") == true)
        #expect(allowError("https://h/#x")?.contains("no fragment (#) is allowed") == true)
        #expect(allowError("ftp://h/")?.contains("the scheme must be http:// or https://") == true)
        #expect(allowError("https://h/a/..%2F")?.contains("hides a dot segment") == true)
        #expect(allowError("https://127.1/")?.contains("dotted-decimal IPv4") == true)
    }

    @Test func upstreamCAFileIsCheckedForHTTPSUpstreams() throws {
        func upstream(_ url: String, _ ca: String) -> String {
            "upstreams:\n  app: { ca_file: \"\(ca)\", url: \"\(url)\" }\nroutes:\n  - upstream: app\n"
        }
        #expect(parseError(upstream("https://a", "/nonexistent.pem"))?.description
            == "coatcheck.yaml:2:19: upstreams.app.ca_file: cannot read /nonexistent.pem")
        #expect(parseError(upstream("http://a", "/nonexistent.pem")) == nil, "unused by an http:// upstream")
        let caFile = try writeTempFile("-----BEGIN CERTIFICATE-----\n", suffix: ".pem")
        defer { unlink(caFile) }
        #expect(try ConfigLoader.parse(yaml: upstream("https://a", caFile), file: "f").upstreams[0].caFile == caFile)
    }
}
