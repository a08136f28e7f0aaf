#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Yams

/// Values from `serve` flags (SPEC §1); nil means "not given".
public struct ConfigOverrides: Sendable, Equatable {
    /// `--listen ADDR`.
    public var listen: String?
    /// `--upstream URL`: replaces upstreams and routes with one catch-all `auto` route.
    public var upstream: String?
    /// `--store URL`.
    public var store: String?
    /// `--async-after DURATION`: sets `async_after` of every route.
    public var asyncAfter: Duration?
    /// `--admin-listen ADDR`.
    public var adminListen: String?
    /// `--threads N|auto`: a string so that `auto` can override a file's number.
    public var threads: String?
    /// `--log-level LEVEL`.
    public var logLevel: String?

    public init(
        listen: String? = nil, upstream: String? = nil, store: String? = nil, asyncAfter: Duration? = nil,
        adminListen: String? = nil, threads: String? = nil, logLevel: String? = nil
    ) {
        self.listen = listen
        self.upstream = upstream
        self.store = store
        self.asyncAfter = asyncAfter
        self.adminListen = adminListen
        self.threads = threads
        self.logLevel = logLevel
    }

    /// The first flag whose value does not parse, as `--name: problem`, or
    /// nil. Checked before anything else, so a bad value is a usage error
    /// (exit 64) whatever else is missing.
    public func invalidFlag() -> String? {
        func check<T>(_ value: String?, _ name: String, _ parse: (String) -> Result<T, Problem>) -> String? {
            guard let value, case .failure(let p) = parse(value) else { return nil }
            return "\(name): \(p.message)"
        }
        return check(listen, "--listen", parseAddress)
            ?? check(upstream, "--upstream", parseUpstreamURL)
            ?? check(store, "--store", parseStore)
            ?? check(adminListen, "--admin-listen", parseAddress)
            ?? check(threads, "--threads", parseThreads)
            ?? check(logLevel, "--log-level", parseLogLevel)
    }
}

/// Reads the YAML configuration (SPEC §2) by walking Yams' node tree by hand,
/// so that every error points at FILE:LINE:COL of the offending key or value.
public enum ConfigLoader {
    /// The name of the single upstream built from `--upstream`/`COATCHECK_UPSTREAM`.
    public static let defaultUpstreamName = "default"

    /// Reads and parses the file at `path`; errors name `path`.
    public static func load(path: String) throws(ConfigError) -> Configuration {
        try parse(yaml: readFile(path), file: path)
    }

    /// Parses YAML text; `file` is only used in error messages. `environment`
    /// serves `callback.secret_env`; nil reads the process environment.
    public static func parse(
        yaml: String, file: String, environment: [String: String]? = nil
    ) throws(ConfigError) -> Configuration {
        try parse(yaml: yaml, file: file, environment: environment, requireRoutes: true)
    }

    /// The effective configuration for `serve` (SPEC §1 precedence: flags, then
    /// environment, then the file, then defaults). `file` is `--config`;
    /// without it `COATCHECK_CONFIG` names the file.
    public static func resolve(
        file: String?, flags: ConfigOverrides, environment: [String: String]
    ) throws(ConfigError) -> Configuration {
        // Empty variables count as unset: `docker run -e COATCHECK_X=` is a common way to clear one.
        func env(_ name: String) -> String? {
            guard let v = environment[name], !v.isEmpty else { return nil }
            return v
        }
        let upstreamOverride: (value: String, source: Source)? =
            flags.upstream.map { ($0, .flag("--upstream")) } ?? env("COATCHECK_UPSTREAM").map { ($0, .env("COATCHECK_UPSTREAM")) }

        var config: Configuration
        if let path = file ?? env("COATCHECK_CONFIG") {
            // A file plus an upstream override is the sidecar case: the file may omit routes.
            config = try parse(
                yaml: readFile(path), file: path, environment: environment,
                requireRoutes: upstreamOverride == nil)
        } else if upstreamOverride != nil {
            config = Configuration()
        } else {
            throw ConfigError(
                file: "<flags>", line: 1, column: 1,
                message: "no upstream configured: pass --upstream URL or --config FILE")
        }

        // Environment first, then flags on top.
        if let v = env("COATCHECK_LISTEN") { config.listen = try override(v, .env("COATCHECK_LISTEN"), parseAddress) }
        if let v = env("COATCHECK_STORE") { config.store = try override(v, .env("COATCHECK_STORE"), parseStore) }
        if let v = flags.listen { config.listen = try override(v, .flag("--listen"), parseAddress) }
        if let v = flags.store { config.store = try override(v, .flag("--store"), parseStore) }
        if let v = flags.adminListen { config.adminListen = try override(v, .flag("--admin-listen"), parseAddress) }
        if let v = flags.threads { config.threads = try override(v, .flag("--threads"), parseThreads) }
        if let v = flags.logLevel { config.logLevel = try override(v, .flag("--log-level"), parseLogLevel) }

        if let (value, source) = upstreamOverride {
            let url = try override(value, source, parseUpstreamURL)
            config.upstreams = [Upstream(name: defaultUpstreamName, url: url)]
            var route = Route(upstream: defaultUpstreamName)
            route.pathPrefix = "/"
            route.mode = .auto
            config.routes = [route]
        }
        if let d = flags.asyncAfter {
            for i in config.routes.indices { config.routes[i].asyncAfter = d }
        }
        return config
    }

    // MARK: - Internals

    enum Source {
        case flag(String), env(String)
    }

    private static func override<T>(
        _ value: String, _ source: Source, _ parse: (String) -> Result<T, Problem>
    ) throws(ConfigError) -> T {
        switch parse(value) {
        case .success(let v): return v
        case .failure(let p):
            switch source {
            case .flag(let name): throw ConfigError(file: "<flags>", line: 1, column: 1, message: "\(name): \(p.message)")
            case .env(let name): throw ConfigError(file: "<env>", line: 1, column: 1, message: "\(name): \(p.message)")
            }
        }
    }

    static func parse(
        yaml: String, file: String, environment: [String: String]?, requireRoutes: Bool
    ) throws(ConfigError) -> Configuration {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw yamlError(error, file: file)
        }
        let lookup: @Sendable (String) -> String? =
            if let environment { { environment[$0] } } else { { getenv($0).map { String(cString: $0) } } }
        let walker = Walker(file: file, lookupEnv: lookup)
        return try walker.configuration(root, requireRoutes: requireRoutes)
    }

    /// One line out of whatever Yams threw; its own description is multi-line with a snippet.
    private static func yamlError(_ error: any Error, file: String) -> ConfigError {
        func make(_ line: Int, _ column: Int, _ text: String, prefix: String = "YAML syntax error: ") -> ConfigError {
            // SPEC §1: exactly one line, whatever the underlying text holds.
            let flat = (prefix + text).split(whereSeparator: \.isNewline).joined(separator: " ")
            return ConfigError(file: file, line: max(line, 1), column: max(column, 1), message: flat)
        }
        guard let error = error as? YamlError else { return make(1, 1, "\(error)", prefix: "YAML error: ") }
        switch error {
        case .scanner(let context, let problem, let mark, _),
             .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            let text = context.map { "\(problem) (\($0.text) at \($0.mark.line):\($0.mark.column))" } ?? problem
            return make(mark.line, mark.column, text)
        case .reader(let problem, let offset, _, let yaml):
            var line = 1, column = 1
            for ch in yaml.prefix(offset ?? 0) {
                if ch == "\n" { line += 1; column = 1 } else { column += 1 }
            }
            return make(line, column, problem)
        case .duplicatedKeysInMapping(let duplicates, let context):
            let keys = duplicates.map { "'\($0)'" }.joined(separator: ", ")
            return make(context.mark.line, context.mark.column, "duplicate key \(keys)", prefix: "")
        default:
            return make(1, 1, "\(error)", prefix: "YAML error: ")
        }
    }

    /// Reads a whole file with POSIX calls so that the message is strerror's.
    static func readFile(_ path: String) throws(ConfigError) -> String {
        func fail(_ what: String) -> ConfigError {
            ConfigError(file: path, line: 1, column: 1, message: "\(what): \(String(cString: strerror(errno)))")
        }
        guard let f = fopen(path, "rb") else { throw fail("cannot open the configuration file") }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            bytes.append(contentsOf: buffer[0..<n])
            if n < buffer.count {
                if ferror(f) != 0 { throw fail("cannot read the configuration file") }
                break
            }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigError(file: path, line: 1, column: 1, message: "the configuration file is not valid UTF-8")
        }
        return text
    }
}
