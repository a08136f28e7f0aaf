import Config
import Foundation
import TestSupport
import Testing

// SPEC §6, `https://` upstreams: TLS 1.2+, the certificate verified against
// the system's store plus `ca_file`, the host name checked, SNI sent; a
// failed handshake or verification is 502 upstream_unreachable (a failed job
// with that code), never a silent downgrade. Pooled like plain connections.
// The peer is a real TLS server process; the certificates are made here.

/// One PKI for the whole suite: making keys takes a moment.
private let pki = Result { try TestPKI() }

/// A proxy whose one route sends to `https://HOST:PORT`, trusting the test CA unless told not to.
private func tlsProxy(host: String = "localhost", port: Int, trustTestCA: Bool = true, mode: RouteMode = .sync,
                      _ extra: (inout Configuration) -> Void = { _ in }) throws -> TestProxy {
    let caFile = try pki.get().caFile
    return try TestProxy(upstreamPort: port) { c in
        c.upstreams[0].url = UpstreamURL(scheme: "https", host: host, port: port, pathPrefix: "")
        if trustTestCA { c.upstreams[0].caFile = caFile }
        c.routes[0].mode = mode
        c.limits.shutdownGrace = .milliseconds(500)
        extra(&c)
    }
}

@Suite struct TLSUpstreamTests {
    @Test func syncRequestsAreVerifiedSentWithSNIAndPooled() throws {
        let server = try TLSServer(certificate: try pki.get().certificate(.good))
        let proxy = try tlsProxy(port: server.port)
        let c = try RawClient(port: proxy.port)
        var connections: Set<String> = []
        for i in 0..<3 {
            try c.send("GET /hello/\(i) HTTP/1.1\r\nHost: test.local\r\n\r\n")
            let r = try c.readResponse()
            #expect(r.status == 200)
            #expect(r.text == "tls ok GET /hello/\(i)")
            #expect(r.header("x-server-name") == "localhost", "SNI")
            connections.insert(r.header("x-connection") ?? "?")
        }
        #expect(connections.count == 1, "one pooled TLS connection for three requests: \(connections)")
    }

    @Test func anIPLiteralIsCheckedAgainstTheCertificatesAddresses() throws {
        let server = try TLSServer(certificate: try pki.get().certificate(.good))
        let proxy = try tlsProxy(host: "127.0.0.1", port: server.port)
        let r = try get(proxy.port, "/ip")
        #expect(r.status == 200)
        #expect(r.text == "tls ok GET /ip")
        #expect(r.header("x-server-name") == "-", "no SNI for an IP address (RFC 6066)")
    }

    @Test func largeBodiesCrossTLSIntactBothWays() throws {
        let server = try TLSServer(certificate: try pki.get().certificate(.good))
        let proxy = try tlsProxy(port: server.port)
        let size = 3_000_000
        let down = try get(proxy.port, "/bytes/\(size)")
        #expect(down.status == 200)
        #expect(down.body.count == size)
        #expect(down.body.enumerated().allSatisfy { $0.element == UInt8($0.offset & 0xFF) }, "bytes intact")

        let upload = (0..<1_000_000).map { UInt8(($0 * 7) & 0xFF) }
        let c = try RawClient(port: proxy.port, timeout: 20)
        try c.send(Array("POST /echo HTTP/1.1\r\nHost: test.local\r\nContent-Length: \(upload.count)\r\nConnection: close\r\n\r\n".utf8) + upload)
        let up = try c.readResponse()
        #expect(up.status == 200)
        #expect(up.body == upload, "request body intact")
    }

    @Test(arguments: [
        (TestPKI.Kind.wrongHost, true),
        (.selfSigned, true),
        (.good, false),  // a CA the proxy was not told to trust
    ])
    func aCertificateThatFailsVerificationIs502(kind: TestPKI.Kind, trustTestCA: Bool) throws {
        let server = try TLSServer(certificate: try pki.get().certificate(kind))
        let proxy = try tlsProxy(port: server.port, trustTestCA: trustTestCA)
        let r = try get(proxy.port, "/secret")
        expectJSONError(r, status: 502, code: "upstream_unreachable")
    }

    @Test func aPlainHTTPUpstreamBehindAnHTTPSURLIsNeverSpokenToInClearText() throws {
        let upstream = try FakeUpstream { _ in Array(okReply.utf8) }
        let proxy = try tlsProxy(port: upstream.port)
        let r = try get(proxy.port, "/plain")
        expectJSONError(r, status: 502, code: "upstream_unreachable")
        var first: UInt8?
        var clearText = false
        #expect(upstream.waitForReceived(timeout: 5) { bytes in
            first = bytes.first
            clearText = find(bytes, Array("GET /plain".utf8)) != nil
            return !bytes.isEmpty
        })
        #expect(!clearText, "the request went out in clear text")
        #expect(first == 0x16, "a TLS handshake record came first")
    }

    @Test func aJobToAnHTTPSUpstreamCompletesAndOneThatFailsVerificationSaysWhy() throws {
        let good = try TLSServer(certificate: try pki.get().certificate(.good))
        let proxy = try tlsProxy(port: good.port, mode: .async)
        let job = try createJob(proxy.port, path: "/report", body: "payload")
        let done = try awaitTerminal(proxy.port, job.id)
        #expect(done.string("status") == "completed")
        let result = try sendRequest(proxy.port, method: "GET", path: "/jobs/\(job.id)/result")
        #expect(result.status == 200)
        #expect(result.text == "payload")

        let wrong = try TLSServer(certificate: try pki.get().certificate(.wrongHost))
        let failing = try tlsProxy(port: wrong.port, mode: .async)
        let failed = try awaitTerminal(failing.port, try createJob(failing.port, body: "x").id)
        #expect(failed.string("status") == "failed")
        let error = failed.object("error")
        #expect(error?.string("code") == "upstream_unreachable")
        #expect(error?.string("message")?.hasPrefix("tls: certificate verify failed: hostname mismatch") == true,
                "\(error ?? [:])")
    }

    @Test func theLogLineSaysWhyTheHandshakeFailed() throws {
        let server = try TLSServer(certificate: try pki.get().certificate(.selfSigned))
        let config = try writeTempFile("""
            listen: "127.0.0.1:0"
            store: "memory:"
            upstreams:
              app: { url: "https://localhost:\(server.port)" }
            routes:
              - match: { path_prefix: "/" }
                upstream: app
            """)
        let (child, port, _) = try serveProcess(["--config", config])
        let r = try get(port, "/x")
        expectJSONError(r, status: 502, code: "upstream_unreachable")
        let line = try child.waitForLine(containing: "tls: certificate verify failed")
        #expect(line.contains("self-signed certificate"), "\(line)")
    }

    @Test func anUnreadableCAFileStopsTheStart() throws {
        var threw: String?
        do {
            _ = try tlsProxy(port: 1) { $0.upstreams[0].caFile = "/nonexistent/ca.pem" }
        } catch {
            threw = "\(error)"
        }
        #expect(threw?.contains("ca_file /nonexistent/ca.pem") == true, "\(threw ?? "started")")
    }
}
