import Foundation
import TestSupport
import Testing

extension Tag {
    /// The 1 GiB memory-bound test: long (tens of seconds), run it alone with
    /// `swift test --filter MemoryBoundTests` or skip it with `--skip MemoryBoundTests`.
    @Tag static var memoryBound: Self
}

/// Issue "The engine": proxying a 1 GiB response or request must not grow
/// the proxy's memory by more than 64 MiB. Bodies stream with backpressure;
/// nothing is buffered whole.
@Suite struct MemoryBoundTests {
    static let total: Int64 = 1 << 30
    static let allowedGrowthKiB = 64 * 1024
    /// Per phase; the issue wants the whole test well under 2 minutes.
    static let phaseDeadline: Double = 50

    @Test(.tags(.memoryBound), .timeLimit(.minutes(3)))
    func oneGiBEachWayKeepsTheProxysPeakRSSWithin64MiB() throws {
        let (backend, backendPort) = try demoBackendProcess()
        let path = try writeTempFile("""
            listen: "127.0.0.1:0"
            store: "memory:"
            access_log: off
            limits:
              max_request_body: 2GiB
              body_timeout: 5m
            upstreams:
              app:
                url: "http://127.0.0.1:\(backendPort)"
                sync_timeout: 5m
            routes:
              - match: { path_prefix: "/" }
                upstream: app
                mode: sync

            """)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let (serve, port, _) = try serveProcess(["--config", path])

        // Warm up the paths (and allocator) with small transfers, then take the idle mark.
        #expect(try get(port, "/bytes/100000").body.count == 100_000)
        #expect(try request(port, "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n").text == "abc")
        let idleKiB = serve.peakRSSKiB
        #expect(idleKiB > 0)

        // 1. A 1 GiB response, read as fast as possible and discarded.
        // Each phase records its own failure so that one does not hide the other.
        do {
            let start = ContinuousClock.now
            let down = try StreamingClient(port: port)
            try down.send(Array("GET /bytes/\(Self.total) HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
            let head = try down.readHead(deadline: Self.phaseDeadline, start: start)
            #expect(head.startLine.hasPrefix("HTTP/1.1 200"))
            let got = try down.readBody(head, deadline: Self.phaseDeadline, start: start)
            let seconds = secondsSince(start)
            #expect(got == Self.total)
            print("memory-bound: GET 1 GiB in \(fmt(seconds))s (\(fmt(Double(got) / seconds / 1e6)) MB/s), VmHWM \(idleKiB) -> \(serve.peakRSSKiB) KiB")
        } catch {
            Issue.record("GET /bytes/\(Self.total) through the proxy: \(error)")
        }

        // 2. A 1 GiB chunked request to /echo, its echo read at the same time.
        do {
            let start = ContinuousClock.now
            let up = try StreamingClient(port: port)
            try up.send(Array("POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n".utf8))
            let writer = up.startChunkedWriter(total: Self.total, chunkSize: 1 << 20)
            let head = try up.readHead(deadline: Self.phaseDeadline, start: start)
            #expect(head.startLine.hasPrefix("HTTP/1.1 200"))
            let echoed = try up.readBody(head, deadline: Self.phaseDeadline, start: start)
            let seconds = secondsSince(start)
            let writerError = writer.wait(timeout: 10)
            #expect(writerError == nil, "writer: \(writerError ?? "")")
            #expect(echoed == Self.total)
            #expect(up.sample == Array(StreamingClient.pattern.prefix(up.sample.count)), "the echo differs from what was sent")
            print("memory-bound: POST+echo 1 GiB in \(fmt(seconds))s (\(fmt(Double(echoed) / seconds / 1e6)) MB/s), VmHWM \(idleKiB) -> \(serve.peakRSSKiB) KiB")
        } catch {
            Issue.record("POST 1 GiB to /echo through the proxy: \(error)")
        }

        let peakKiB = serve.peakRSSKiB
        #expect(peakKiB - idleKiB < Self.allowedGrowthKiB,
                "the proxy's peak RSS grew by \((peakKiB - idleKiB) / 1024) MiB (idle \(idleKiB / 1024) MiB, peak \(peakKiB / 1024) MiB)")
        #expect(serve.process.isRunning)
        _ = backend
    }
}

private func fmt(_ x: Double) -> String { String(format: "%.1f", x) }
