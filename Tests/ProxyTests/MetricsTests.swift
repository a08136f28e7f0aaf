import Config
import Foundation
import Server
import TestSupport
import Testing

/// `/metrics` (SPEC §7) through real sockets: counters exact across loops,
/// the route and upstream labels, faults, jobs and their gauges, the text
/// format, and `metrics: off`.
@Suite(.serialized) struct MetricsTests {
    @Test func requestCountersAreExactAcrossLoopsAndConnections() throws {
        let backend = try InProcessBackend()
        let proxy = try metricsProxy(upstreamPort: backend.port, threads: 2)
        let port = proxy.port
        let errors = Box(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            do {
                let c = try RawClient(port: port)
                for _ in 0..<25 {
                    try c.send("GET /status/201 HTTP/1.1\r\nHost: a\r\n\r\n")
                    if try c.readResponse().status != 201 { errors.withLock { $0 += 1 } }
                }
            } catch { errors.withLock { $0 += 1 } }
        }
        for _ in 0..<10 { #expect(try sendRequest(port, path: "/status/503").status == 503) }
        #expect(errors.withLock { $0 } == 0)

        let m = try scrape(proxy)
        #expect(m[#"coatcheck_http_requests_total{route="/",method="GET",code="201"}"#] == 200)
        #expect(m[#"coatcheck_http_requests_total{route="/",method="POST",code="503"}"#] == 10)
        #expect(m[#"coatcheck_upstream_requests_total{upstream="app",code="201"}"#] == 200)
        #expect(m[#"coatcheck_upstream_requests_total{upstream="app",code="503"}"#] == 10)
        #expect(m[#"coatcheck_http_request_duration_seconds_count{route="/"}"#] == 210)
        #expect(m[#"coatcheck_http_request_duration_seconds_bucket{route="/",le="+Inf"}"#] == 210)
        #expect(m[#"coatcheck_upstream_request_duration_seconds_count{upstream="app"}"#] == 210)
        #expect((m[#"coatcheck_http_request_duration_seconds_sum{route="/"}"#] ?? 0) > 0)
        #expect(m[#"coatcheck_build_info{version="\#(CoatcheckServer.version)"}"#] == 1)
        // Scraping again adds nothing: counters are folded, not re-added.
        let again = try scrape(proxy)
        #expect(again[#"coatcheck_http_requests_total{route="/",method="GET",code="201"}"#] == 200)
    }

    @Test func unroutedRequestsAndTheJobAPIHaveTheirOwnRouteLabels() throws {
        let backend = try InProcessBackend()
        let proxy = try metricsProxy(upstreamPort: backend.port) { c in
            c.routes[0].pathPrefix = "/status"
            c.routes[0].name = "application"
        }
        #expect(try get(proxy.port, "/elsewhere").status == 404)
        #expect(try get(proxy.port, "/jobs/\(unknownJobID())").status == 404)
        #expect(try get(proxy.port, "/status/200").status == 200)
        let m = try scrape(proxy)
        #expect(m[#"coatcheck_http_requests_total{route="(none)",method="GET",code="404"}"#] == 1)
        #expect(m[#"coatcheck_http_requests_total{route="/jobs",method="GET",code="404"}"#] == 1)
        #expect(m[#"coatcheck_http_requests_total{route="application",method="GET",code="200"}"#] == 1)
        // A malformed request, answered before routing, counts as unrouted.
        let r = try request(proxy.port, "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n")
        #expect(r.status == 400)
        #expect(try scrape(proxy)[#"coatcheck_http_requests_total{route="(none)",method="GET",code="400"}"#] == 1)
        // A method the proxy does not know is `other`, not the last one seen.
        #expect(try request(proxy.port, "FOO / HTTP/1.1\r\nHost: a\r\n\r\n").status == 501)
        #expect(try request(proxy.port, "get / HTTP/1.1\r\nHost: a\r\n\r\n").status == 501, "methods are case-sensitive")
        let after = try scrape(proxy)
        #expect(after[#"coatcheck_http_requests_total{route="(none)",method="other",code="501"}"#] == 2)
        #expect(after[#"coatcheck_http_requests_total{route="(none)",method="GET",code="400"}"#] == 1)
        #expect(after[#"coatcheck_http_requests_total{route="(none)",method="GET",code="501"}"#] == nil)
    }

    @Test func upstreamFaultsAreCountedByError() throws {
        let closed = try closedPort()
        let proxy = try metricsProxy(upstreamPort: closed)
        #expect(try get(proxy.port, "/x").status == 502)
        #expect(try get(proxy.port, "/y").status == 502)
        let m = try scrape(proxy)
        #expect(m[#"coatcheck_upstream_requests_total{upstream="app",error="unreachable"}"#] == 2)
        #expect(m[#"coatcheck_http_requests_total{route="/",method="GET",code="502"}"#] == 2)
    }

    /// Before anything happened: the counters a configuration can move are
    /// there at 0, so `rate()` and `absent()` see them; a sync route's
    /// upstream gets no job series.
    @Test func jobAndWebhookCountersExistAtZeroBeforeTheirFirstEvent() throws {
        let proxy = try metricsProxy(upstreamPort: try closedPort(), mode: .async) { c in
            var cb = Callback()
            cb.allow = [CallbackURL.parse("http://127.0.0.1:9/")!]
            cb.secrets = ["s"]
            c.routes[0].callback = cb
            c.routes[0].name = "orders"
            var plain = c.routes[0]
            plain.name = "plain"
            plain.mode = .sync
            plain.callback = nil
            plain.upstream = "other"
            plain.pathPrefix = "/plain"
            var other = c.upstreams[0]
            other.name = "other"
            c.upstreams.append(other)
            c.routes.insert(plain, at: 0)
        }
        let m = try scrape(proxy)
        #expect(m[#"coatcheck_jobs_created_total{route="orders",mode="async"}"#] == 0)
        for status in ["completed", "failed", "canceled"] {
            #expect(m[#"coatcheck_jobs_finished_total{upstream="app",status="\#(status)"}"#] == 0, "\(status)")
        }
        #expect(m[#"coatcheck_job_retries_total{upstream="app"}"#] == 0)
        for result in ["delivered", "failed_attempt", "failed"] {
            #expect(m[#"coatcheck_webhook_deliveries_total{route="orders",result="\#(result)"}"#] == 0, "\(result)")
        }
        #expect(!m.keys.contains { $0.contains(#"upstream="other""#) && $0.hasPrefix("coatcheck_job") })
        #expect(!m.keys.contains { $0.contains(#"route="plain""#) && $0.hasPrefix("coatcheck_jobs_created") })
        // Counted from 0: one job that fails (the upstream is closed) is 1.
        _ = try createJob(proxy.port, body: "x")
        #expect(waitUntil(timeout: 5) {
            (try? scrape(proxy))?[#"coatcheck_jobs_finished_total{upstream="app",status="failed"}"#] == 1
        })
        #expect(try scrape(proxy)[#"coatcheck_jobs_created_total{route="orders",mode="async"}"#] == 1)
    }

    @Test func jobsAreCountedFromCreationToTheirEndWithTheirGauges() throws {
        let upstream = try FakeUpstream(gated: true)
        let proxy = try metricsProxy(upstreamPort: upstream.port, mode: .async) { c in
            c.upstreams[0].maxConcurrency = 1
        }
        let a = try createJob(proxy.port)
        let b = try createJob(proxy.port)
        #expect(upstream.waitForRequests(1))
        #expect(waitUntil(timeout: 5) {
            let m = (try? scrape(proxy)) ?? [:]
            return m[#"coatcheck_jobs{state="running"}"#] == 1 && m[#"coatcheck_jobs{state="queued"}"#] == 1
        })
        let waiting = try scrape(proxy)
        #expect(waiting[#"coatcheck_upstream_in_flight{upstream="app"}"#] == 1)
        #expect(waiting[#"coatcheck_upstream_queue_depth{upstream="app"}"#] == 1)
        #expect((waiting[#"coatcheck_upstream_queue_oldest_seconds{upstream="app"}"#] ?? 0) > 0)
        #expect(waiting[#"coatcheck_jobs_created_total{route="/",mode="async"}"#] == 2)

        upstream.releaseAll()
        _ = try awaitTerminal(proxy.port, a.id)
        _ = try awaitTerminal(proxy.port, b.id)
        let done = try scrape(proxy)
        #expect(done[#"coatcheck_jobs_finished_total{upstream="app",status="completed"}"#] == 2)
        #expect(done[#"coatcheck_job_duration_seconds_count{upstream="app"}"#] == 2)
        #expect(done[#"coatcheck_jobs{state="completed"}"#] == 2)
        #expect(done[#"coatcheck_jobs{state="running"}"#] == 0)
        #expect(done[#"coatcheck_upstream_queue_depth{upstream="app"}"#] == 0)
        #expect(done[#"coatcheck_upstream_queue_oldest_seconds{upstream="app"}"#] == 0)

        // Deleting a finished job takes it out of the gauge.
        #expect(try sendRequest(proxy.port, method: "DELETE", path: "/jobs/\(a.id)").status == 204)
        #expect(waitUntil(timeout: 5) { ((try? scrape(proxy)) ?? [:])[#"coatcheck_jobs{state="completed"}"#] == 1 })
    }

    @Test func theStoreCommitsAreTimed() throws {
        let backend = try InProcessBackend()
        let proxy = try metricsProxy(upstreamPort: backend.port, mode: .async, store: "sqlite")
        let job = try createJob(proxy.port, path: "/echo")
        _ = try awaitTerminal(proxy.port, job.id)
        let m = try scrape(proxy)
        #expect((m[#"coatcheck_store_commit_duration_seconds_count{store="sqlite"}"#] ?? 0) >= 2,
                "the insert and the end are two commits at least")
    }

    @Test func metricsOffLeavesNoPageAndTheProxyServes() throws {
        let backend = try InProcessBackend()
        let proxy = try metricsProxy(upstreamPort: backend.port) { $0.metrics = false }
        #expect(try get(proxy.port, "/status/200").status == 200)
        let admin = try #require(proxy.server.adminPort)
        #expect(try get(admin, "/metrics").status == 404)
        #expect(try get(admin, "/healthz").status == 200)
    }
}

/// A proxy with an admin listener (metrics on unless `extra` says otherwise).
private func metricsProxy(upstreamPort: Int, threads: Int = 1, mode: RouteMode = .sync, store: String = "memory:",
                          _ extra: (inout Configuration) -> Void = { _ in }) throws -> TestProxy {
    try jobProxy(upstreamPort: upstreamPort, mode: mode, threads: threads, store: store) { c in
        c.adminListen = SocketAddressSpec(host: "127.0.0.1", port: 0)
        extra(&c)
    }
}

/// GET /metrics, checked line by line against the text format, as a map
/// from series (name and labels, as written) to value.
func scrape(_ proxy: TestProxy) throws -> [String: Double] {
    try scrape(adminPort: try #require(proxy.server.adminPort))
}

/// The same for any coatcheck's admin listener.
func scrape(adminPort admin: Int) throws -> [String: Double] {
    let r = try get(admin, "/metrics")
    guard r.status == 200 else { throw TestError("/metrics: \(r.status)") }
    guard r.header("Content-Type")?.hasPrefix("text/plain; version=0.0.4") == true else {
        throw TestError("/metrics content type: \(r.header("Content-Type") ?? "none")")
    }
    var out: [String: Double] = [:]
    var typed: Set<String> = []
    for line in r.text.split(separator: "\n") {
        if line.hasPrefix("# TYPE ") {
            let parts = line.split(separator: " ")
            guard parts.count == 4, ["counter", "gauge", "histogram"].contains(parts[3]) else {
                throw TestError("bad TYPE line: \(line)")
            }
            guard typed.insert(String(parts[2])).inserted else { throw TestError("family typed twice: \(line)") }
            continue
        }
        if line.hasPrefix("# HELP ") { continue }
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
            throw TestError("bad sample line: \(line)")
        }
        let series = String(line[..<space])
        let name = String(series.prefix { $0 != "{" })
        guard name.hasPrefix("coatcheck_"), typed.contains(where: { name == $0 || name.hasPrefix($0 + "_") }) else {
            throw TestError("sample of an untyped family: \(line)")
        }
        guard out.updateValue(value, forKey: series) == nil else { throw TestError("series twice: \(line)") }
    }
    try checkHistograms(out)
    return out
}

/// Every histogram's buckets are cumulative, and its +Inf bucket is its count.
private func checkHistograms(_ m: [String: Double]) throws {
    for (series, count) in m where series.contains("_count{") {
        let base = String(series.replacingOccurrences(of: "_count{", with: "_bucket{").dropLast())
        let buckets = m.filter { $0.key.hasPrefix(base + ",le=") }
        let infKey = base + #",le="+Inf"}"#
        guard let inf = buckets[infKey], inf == count else {
            throw TestError("\(series): the +Inf bucket is not the count \(count)")
        }
        let ordered = buckets.map { (le: $0.key, n: $0.value) }.sorted { bound($0.le) < bound($1.le) }
        for (x, y) in zip(ordered, ordered.dropFirst()) where y.n < x.n {
            throw TestError("\(series): buckets not cumulative at \(y.le)")
        }
    }
}

private func bound(_ series: String) -> Double {
    guard let r = series.range(of: #"le=""#) else { return 0 }
    let v = series[r.upperBound...].prefix { $0 != "\"" }
    return v == "+Inf" ? .infinity : Double(v) ?? 0
}
