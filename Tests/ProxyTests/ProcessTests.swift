import Foundation
import TestSupport
import Testing

/// SPEC §1 and §7 on the built binary: the drop-in command line,
/// check-config, exit codes, SIGTERM drain, SIGHUP reload, admin endpoints.
@Suite struct ProcessTests {
    /// The §2 example of SPEC.md, verbatim (one copy, shared with ConfigTests).
    static let specExample = try! String(contentsOfFile: fixturePath("spec-example.yaml"), encoding: .utf8)

    /// `in_flight` of a demo-backend process, from its /stats.
    static func backendInFlight(_ port: Int) -> Int? {
        guard let r = try? get(port, "/stats"),
              let o = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any] else { return nil }
        return o["in_flight"] as? Int
    }

    @Test func serveWithOnlyUpstreamAndListenFlagsProxies() throws {
        let (backend, backendPort) = try demoBackendProcess()
        let (serve, port, _) = try serveProcess(["--upstream", "http://127.0.0.1:\(backendPort)", "--listen", "127.0.0.1:0"])
        let r = try get(port, "/status/201")
        #expect(r.status == 201)
        #expect(r.text == "{\"status\":201}")
        let e = try request(port, "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
        #expect(e.status == 200)
        #expect(e.text == "abc")
        #expect(serve.process.isRunning)
        _ = backend
    }

    /// `--upstream` with a file: the sidecar case when the file has no
    /// routes; when it has some, they are replaced, and the log says so.
    @Test(arguments: [true, false])
    func anUpstreamFlagSaysWhenItReplacesTheFilesRoutes(fileHasRoutes: Bool) throws {
        let yaml = fileHasRoutes
            ? "upstreams:\n  app: { url: \"http://127.0.0.1:9\" }\nroutes:\n  - { match: { path_prefix: \"/\" }, upstream: app, mode: async }\n"
            : "jobs: { max_wait: 5s }\n"
        let path = try writeTempFile(yaml)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (serve, _, _) = try serveProcess(["--config", path, "--upstream", "http://127.0.0.1:9", "--listen", "127.0.0.1:0",
                                              "--store", "memory:"])
        // Events go to stderr in order: a warning at start precedes this line.
        let warned = serve.output.contains { $0.contains("--upstream replaces the file's routes and upstreams") }
        #expect(warned == fileHasRoutes, "output: \(serve.output)")
    }

    /// SPEC §7: one JSON line per request on stdout, with the fields operators grep for.
    @Test func accessLogWritesOneJSONLinePerRequest() throws {
        let (backend, backendPort) = try demoBackendProcess()
        let (serve, port, _) = try serveProcess(["--upstream", "http://127.0.0.1:\(backendPort)", "--listen", "127.0.0.1:0"])
        #expect(try get(port, "/status/418?x=\"q\"").status == 418)
        let line = try serve.waitForLine(containing: "\"path\":\"/status/418")
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        #expect(object?["method"] as? String == "GET")
        #expect(object?["path"] as? String == "/status/418?x=\"q\"")
        #expect(object?["status"] as? Int == 418)
        #expect(object?["upstream"] as? String == "default")
        #expect(object?["duration_ms"] is Double || object?["duration_ms"] is Int)
        #expect((object?["ts"] as? String)?.hasSuffix("Z") == true)
        _ = backend
    }

    /// A request that became a job, and reads of it, name the job by its
    /// first 8 characters, in the `job` field and in the logged path: ids
    /// are capabilities, never logged whole (SPEC §5).
    @Test func accessLogNamesTheJobByItsPrefix() throws {
        let (backend, backendPort) = try demoBackendProcess()
        let (serve, port, _) = try serveProcess(["--upstream", "http://127.0.0.1:\(backendPort)", "--listen", "127.0.0.1:0",
                                                 "--store", "memory:"])
        let accepted = try request(port, "GET /status/200 HTTP/1.1\r\nHost: a\r\nPrefer: respond-async\r\nConnection: close\r\n\r\n")
        #expect(accepted.status == 202)
        let id = try #require(accepted.header("job-id"))
        #expect(try get(port, "/jobs/\(id)?wait=1").status == 200)
        #expect(try get(port, "/jobs/\(id)/result").status == 200)
        let shown = String(id.prefix(8))
        for path in ["/status/200", "/jobs/\(shown)…?wait=1", "/jobs/\(shown)…/result"] {
            let line = try serve.waitForLine(containing: "\"path\":\"\(path)\"")
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object?["job"] as? String == shown, "line: \(line)")
            #expect(!line.contains(id), "the whole id must not be logged: \(line)")
        }
        _ = backend
    }

    @Test func checkConfigAcceptsTheSpecExample() throws {
        let path = try writeTempFile(Self.specExample)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let child = try Child(["check-config", path])
        #expect(child.waitForExit() == 0, "output: \(child.output)")
    }

    /// `coatcheck check-config PATH` on a bad file: exit 1 and exactly one
    /// non-empty line of output, returned.
    func checkConfigRejection(_ path: String) throws -> String {
        let child = try Child(["check-config", path])
        #expect(child.waitForExit() == 1)
        #expect(child.waitForOutputEnd())
        let lines = child.output.filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
        #expect(lines.count == 1, "output: \(lines)")
        return lines.first ?? ""
    }

    @Test func checkConfigReportsAnUnknownKeyOnExactlyOneLine() throws {
        let path = try writeTempFile("""
            listen: "127.0.0.1:0"
            upstreams:
              app:
                url: "http://127.0.0.1:9000"
                max_concurency: 4
            routes:
              - match: { path_prefix: "/" }
                upstream: app

            """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let line = try checkConfigRejection(path)
        #expect(line.hasPrefix("\(path):5:5: "), "line: \(line)")
        #expect(line.contains("max_concurency"), "the message must name the key: \(line)")
    }

    @Test func checkConfigReportsABadValueOnExactlyOneLine() throws {
        let path = try writeTempFile("""
            upstreams:
              app:
                url: "http://127.0.0.1:9000"
            limits:
              header_timeout: soon
            routes:
              - match: { path_prefix: "/" }
                upstream: app

            """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let line = try checkConfigRejection(path)
        #expect(line.hasPrefix("\(path):5:"), "line: \(line)")
    }

    @Test func unknownFlagExits64WithUsage() throws {
        let child = try Child(["serve", "--bogus"])
        #expect(child.waitForExit() == 64)
        #expect(child.waitForOutputEnd())
        #expect(child.output.contains { $0.lowercased().contains("usage") }, "output: \(child.output)")
        #expect(!child.output.contains { $0.contains("Fatal error") || $0.contains("Stack dump") })
    }

    /// A bad flag value is a usage error even when the rest of the command
    /// line would also fail (here: no upstream at all); the message names it.
    @Test(arguments: [
        (["serve", "--threads", "lots"], "--threads"),
        (["serve", "--log-level", "loud"], "--log-level"),
        (["serve", "--listen", "nowhere"], "--listen"),
        (["serve", "--upstream", "ftp://x"], "--upstream"),
        (["serve", "--store", "disk:"], "--store"),
    ])
    func badFlagValueExits64WithUsage(_ args: [String], _ flag: String) throws {
        let child = try Child(args)
        #expect(child.waitForExit() == 64)
        #expect(child.waitForOutputEnd())
        #expect(child.output.contains { $0.lowercased().contains("usage") }, "output: \(child.output)")
        #expect(child.output.contains { $0.contains(flag) }, "output: \(child.output)")
        #expect(!child.output.contains { $0.contains("no upstream configured") }, "output: \(child.output)")
    }

    @Test func sigtermLetsTheInFlightRequestFinishThenExits0() throws {
        let (backend, backendPort) = try demoBackendProcess()
        let (serve, port, adminPort) = try serveProcess([
            "--upstream", "http://127.0.0.1:\(backendPort)", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        ])
        let admin = try #require(adminPort)
        #expect(try get(admin, "/healthz").status == 200)
        #expect(try get(admin, "/readyz").status == 200)

        let a = try RawClient(port: port, timeout: 10)
        let start = ContinuousClock.now
        // Long enough that /readyz can be asked while it runs even when the
        // machine is busy (a slow start of that check would otherwise meet
        // an already exited process), short of auto mode's 2 s switch.
        try a.send("GET /sleep?ms=1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        #expect(waitUntil(timeout: 3) { Self.backendInFlight(backendPort) == 1 }, "the request never reached the backend")
        serve.signal(SIGTERM)

        #expect(waitUntil(timeout: 0.5) { connectionRefused(port) }, "new connections are still accepted after SIGTERM")
        // Draining: not ready any more (SPEC §7), while the request goes on.
        if secondsSince(start) < 1.0 {
            let ready = try? get(admin, "/readyz")
            #expect(ready?.status == 503, "/readyz while draining: \(ready.map { "\($0.status)" } ?? "no answer")")
        }
        let r = try a.readResponse()
        #expect(r.status == 200)
        #expect(r.text == "{\"slept_ms\":1500}")
        #expect(secondsSince(start) >= 1.45, "answered before the 1500ms sleep could be over")
        #expect(serve.waitForExit(timeout: 10) == 0)
        _ = backend
    }

    @Test func sighupReloadsRoutesWithoutDroppingConnectionsAndKeepsThemOnABadFile() throws {
        let (backend, backendPort) = try demoBackendProcess()
        func config(prefix: String, extra: String = "") -> String {
            """
            listen: "127.0.0.1:0"
            admin_listen: "127.0.0.1:0"
            store: "memory:"
            access_log: off
            threads: 2
            upstreams:
              app:
                url: "http://127.0.0.1:\(backendPort)"
            routes:
              - match: { path_prefix: "\(prefix)" }
                upstream: app
                mode: sync
            \(extra)
            """
        }
        let path = try writeTempFile(config(prefix: "/status"))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (serve, port, adminPort) = try serveProcess(["--config", path])
        let admin = try #require(adminPort)
        #expect(try get(admin, "/healthz").status == 200)
        #expect(try get(admin, "/readyz").status == 200)

        let kept = try RawClient(port: port, timeout: 5)
        func onKept(_ path: String) throws -> Response {
            try kept.send("GET \(path) HTTP/1.1\r\nHost: a\r\n\r\n")
            return try kept.readResponse()
        }
        #expect(try onKept("/status/201").status == 201)
        #expect(try onKept("/sleep?ms=1").status == 404)

        // A changed path_prefix takes effect on new requests.
        try config(prefix: "/sleep").write(toFile: path, atomically: true, encoding: .utf8)
        serve.signal(SIGHUP)
        #expect(waitUntil(timeout: 3) { (try? statusOnNewConnection(port, "/sleep?ms=1")) == 200 }, "the reload never took effect")
        #expect(try statusOnNewConnection(port, "/status/201") == 404)
        // The open keep-alive connection was not dropped, and routes by the new file.
        #expect(try onKept("/sleep?ms=1").status == 200)
        #expect(try onKept("/status/201").status == 404)

        // An invalid file: the reload fails and the running routes stay.
        let linesBefore = serve.output.count
        try config(prefix: "/status", extra: "bogus_key: 1").write(toFile: path, atomically: true, encoding: .utf8)
        serve.signal(SIGHUP)
        #expect(serve.waitForOutput(beyond: linesBefore, timeout: 3), "the failed reload was not logged")
        // Still running 100 ms later: a crash after the log line would show by then.
        Thread.sleep(forTimeInterval: 0.1)
        #expect(serve.process.isRunning)
        #expect(try statusOnNewConnection(port, "/sleep?ms=1") == 200)
        #expect(try statusOnNewConnection(port, "/status/201") == 404)
        #expect(try onKept("/sleep?ms=2").status == 200)
        #expect(try get(admin, "/healthz").status == 200)
        #expect(try get(admin, "/readyz").status == 200)
        _ = backend
    }
}
