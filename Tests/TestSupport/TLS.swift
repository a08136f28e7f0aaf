public import Foundation

/// Certificates made at run time with the `openssl` command (nothing
/// private is committed): a CA, a server certificate it signed for
/// `localhost` and 127.0.0.1, one it signed for another host, and a
/// self-signed one for `localhost`. EC P-256 keys: quick to make.
public final class TestPKI: Sendable {
    public let directory: String
    public var caFile: String { "\(directory)/ca.pem" }

    /// The certificate and key files of one kind of server.
    public enum Kind: String, Sendable { case good, wrongHost = "wrong-host", selfSigned = "self-signed" }

    public func certificate(_ kind: Kind) -> (cert: String, key: String) {
        ("\(directory)/\(kind.rawValue).pem", "\(directory)/\(kind.rawValue).key")
    }

    public init() throws {
        directory = makeTempDirectory(prefix: "coatcheck-pki")
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        try openssl(["req", "-x509"] + ec + [
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=coatcheck test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
        for (name, san) in [("good", "DNS:localhost,IP:127.0.0.1"), ("wrong-host", "DNS:wrong.example")] {
            try "subjectAltName=\(san)\n".write(toFile: "\(directory)/\(name).ext", atomically: true, encoding: .utf8)
            try openssl(["req"] + ec + ["-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(name)"])
            try openssl([
                "x509", "-req", "-in", "\(name).csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", "\(name).pem", "-days", "2", "-extfile", "\(name).ext",
            ])
        }
        try openssl(["req", "-x509"] + ec + [
            "-keyout", "self-signed.key", "-out", "self-signed.pem", "-days", "2", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
    }

    deinit { removeTree(directory) }

    private func openssl(_ arguments: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = arguments
        p.currentDirectoryURL = URL(fileURLWithPath: directory)
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw TestError("openssl \(arguments.joined(separator: " ")) exited \(p.terminationStatus)")
        }
    }
}

/// A real TLS server process (`Tests/Fixtures/tls_server.py`, Python's
/// `ssl`) serving HTTP/1.1 with keep-alive on a free loopback port.
public final class TLSServer: Sendable {
    public let child: Child
    public let port: Int

    public init(certificate: (cert: String, key: String)) throws {
        child = try Child(
            [fixturePath("tls_server.py"), certificate.cert, certificate.key], executable: "/usr/bin/python3")
        let line = try child.waitForLine(containing: "listening on")
        guard let port = portIn(line) else { throw TestError("no port in \(line)") }
        self.port = port
    }
}

/// A webhook receiver process (`Tests/Fixtures/webhook_receiver.py`) that
/// records each delivery and checks its signatures with Python's hmac.
public final class WebhookReceiver: Sendable {
    public let child: Child
    public let port: Int

    /// `answers`: the statuses to answer in turn (`CODE` or `CODE/RETRY_AFTER`), the last repeating.
    public init(secrets: [String], answers: [String] = ["204"], port: Int = 0,
                tls: (cert: String, key: String)? = nil) throws {
        var arguments = [fixturePath("webhook_receiver.py"), "--secrets", secrets.joined(separator: ","),
                         "--answers", answers.joined(separator: ","), "--port", "\(port)"]
        if let tls { arguments += ["--tls", tls.cert, tls.key] }
        child = try Child(arguments, executable: "/usr/bin/python3")
        let line = try child.waitForLine(containing: "listening on")
        guard let port = portIn(line) else { throw TestError("no port in \(line)") }
        self.port = port
    }

    /// The `n`th request received (1-based), once it has arrived: `path`,
    /// `headers` (lower-case names), `size`, `sha256`, `verified` (a bool per
    /// secret), `answered`.
    public func delivery(_ n: Int, timeout: Double = 15) throws -> [String: Any] {
        let line = try child.waitForLine(containing: "\"n\": \(n),", timeout: timeout)
        guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw TestError("not a delivery record: \(line)")
        }
        return object
    }

    /// Requests received so far.
    public var count: Int { child.output.filter { $0.hasPrefix("{") }.count }
}
