import Config
import DemoBackend
import Foundation
import Store
import Proxy
import Server
import TestSupport
import Testing

// Helpers for the job tests (issue 3, SPEC §3-§5): a proxy with job routes,
// creating jobs and reading the status JSON. The upstream that answers only
// when the test says so is TestSupport's `FakeUpstream(gated: true)`.

/// Every job integration suite, one test at a time: several of them measure
/// latencies (the 100 ms long-poll wake, the `async_after` switch, `Prefer:
/// wait`) that the 50 MiB replay or 200 concurrent jobs running beside them
/// on a 2-core machine would blur. The nested suites live in JobModesTests,
/// JobAPITests, JobReplayTests and JobDispatchTests.
@Suite(.serialized) struct JobTests {}

/// A proxy whose one route (`/`, any method) sends to `upstreamPort` in `mode`.
/// A short `shutdown_grace`, so a test that leaves a job running does not
/// hold its teardown for the default 30 s.
/// `store` is `memory:` or `sqlite` (a database in the proxy's temporary
/// `jobs.dir`: commits then come back on the store's writer thread).
func jobProxy(upstreamPort: Int, mode: RouteMode = .async, asyncAfter: Duration = .seconds(2), threads: Int = 1,
              store: String = "memory:", _ extra: (inout Configuration) -> Void = { _ in }) throws -> TestProxy {
    try TestProxy(upstreamPort: upstreamPort, threads: threads) { c in
        c.routes[0].mode = mode
        c.routes[0].asyncAfter = asyncAfter
        c.limits.shutdownGrace = .milliseconds(500)
        if store == "sqlite" { c.store = .sqlite(path: "\(c.jobs.dir)/coatcheck.db") }
        extra(&c)
    }
}

/// The stores the parameterized job tests run against.
let jobStores = ["memory:", "sqlite"]

/// The response body as a JSON object (nil if it is not one).
func jsonObject(_ r: Response) -> [String: Any]? {
    try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
}

extension Dictionary where Key == String, Value == Any {
    func string(_ key: String) -> String? { self[key] as? String }
    func int(_ key: String) -> Int? { (self[key] as? NSNumber)?.intValue }
    func object(_ key: String) -> [String: Any]? { self[key] as? [String: Any] }
    /// The key is present with JSON `null`.
    func isNull(_ key: String) -> Bool { self[key] is NSNull }
    func has(_ key: String) -> Bool { self[key] != nil }
}

/// A job the proxy accepted: its 202, id and JSON.
struct CreatedJob {
    var response: Response
    var id: String
    var json: [String: Any]
}

/// One request on a fresh connection; `headers` are whole lines without CRLF.
func sendRequest(_ port: Int, method: String = "POST", path: String = "/work", host: String = "test.local",
          headers: [String] = [], body: String? = nil, timeout: Double = 10) throws -> Response {
    var text = "\(method) \(path) HTTP/1.1\r\nHost: \(host)\r\n"
    for h in headers { text += h + "\r\n" }
    let bodyBytes = body.map { Array($0.utf8) } ?? []
    if body != nil || method == "POST" || method == "PUT" { text += "Content-Length: \(bodyBytes.count)\r\n" }
    text += "Connection: close\r\n\r\n"
    let c = try RawClient(port: port, timeout: timeout)
    try c.send(Array(text.utf8) + bodyBytes)
    return try c.readResponse(head: method == "HEAD")
}

/// Sends a request that must become a job: throws unless the answer is a 202 with a job id.
func createJob(_ port: Int, method: String = "POST", path: String = "/work", host: String = "test.local",
               headers: [String] = [], body: String? = nil) throws -> CreatedJob {
    let r = try sendRequest(port, method: method, path: path, host: host, headers: headers, body: body)
    guard r.status == 202, let json = jsonObject(r), let id = json.string("job_id") else {
        throw TestError("expected a 202 job, got \(r.status): \(r.text)")
    }
    return CreatedJob(response: r, id: id, json: json)
}

/// GET {jobs.path}/{id}: the response and its JSON (empty if none).
func jobStatus(_ port: Int, _ id: String, headers: [String] = [], query: String = "",
               timeout: Double = 10) throws -> (Response, [String: Any]) {
    let r = try sendRequest(port, method: "GET", path: "/jobs/\(id)\(query)", headers: headers, timeout: timeout)
    return (r, jsonObject(r) ?? [:])
}

/// Long-polls the job until it is terminal (bounded); returns its status JSON.
func awaitTerminal(_ port: Int, _ id: String, headers: [String] = [], seconds: Int = 10) throws -> [String: Any] {
    let deadline = Date().addingTimeInterval(Double(seconds))
    while Date() < deadline {
        let (r, json) = try jobStatus(port, id, headers: headers, query: "?wait=\(seconds)", timeout: Double(seconds) + 5)
        guard r.status == 200 else { throw TestError("status of \(id): \(r.status) \(r.text)") }
        if let s = json.string("status"), ["completed", "failed", "canceled"].contains(s) { return json }
    }
    throw TestError("job \(id) did not end within \(seconds)s")
}

/// Polls the status endpoint until the job reaches `status` (bounded).
func waitForJobStatus(_ port: Int, _ id: String, _ status: String, timeout: Double = 5) -> Bool {
    waitUntil(timeout: timeout) {
        (try? jobStatus(port, id))?.1.string("status") == status
    }
}

/// SPEC §4 timestamps: `2026-11-29T10:00:00.000Z`; Unix milliseconds.
func timestampMillis(_ text: String?) -> Int64? {
    guard let text, text.wholeMatch(of: #/\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z/#) != nil else { return nil }
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    guard let d = f.date(from: text) else { return nil }
    return Int64((d.timeIntervalSince1970 * 1000).rounded())
}

func nowMillis() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

/// A fresh, well-formed job id that names no job.
func unknownJobID() -> String { JobID.random().text }

/// Everything a client sees of a response except nothing: status, reason,
/// every header in order and the body. Two 404s must be equal in this.
func wireView(_ r: Response) -> String {
    "\(r.status) \(r.reason)\n" + r.headers.map { "\($0.0): \($0.1)" }.joined(separator: "\n") + "\n\n" + r.text
}
