import Admin
import Config
import Foundation
import Server
import TestSupport
import Testing

/// SPEC §7: the admin listener serves the job API's OpenAPI document at
/// `GET /openapi.yaml`: docs/openapi.yaml, built into the binary by
/// Scripts/gen-openapi (Sources/Admin/OpenAPIDocument.swift), no file read
/// at run time.
@Suite struct OpenAPIDocumentTests {
    /// docs/openapi.yaml as the repository has it.
    static func documentFile() throws -> [UInt8] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        return Array(try Data(contentsOf: root.appendingPathComponent("docs/openapi.yaml")))
    }

    /// The copy the binary carries.
    static var embedded: [UInt8] {
        let document = OpenAPIDocument.yaml
        return Array(UnsafeBufferPointer(start: document.utf8Start, count: document.utf8CodeUnitCount))
    }

    @Test func theEmbeddedCopyIsDocsOpenAPIYaml() throws {
        let file = try Self.documentFile()
        #expect(file.starts(with: Array("openapi: 3.1".utf8)), "docs/openapi.yaml is not an OpenAPI 3.1 document")
        let embedded = Self.embedded
        // A Bool, so a failure names the first differing line instead of printing 40 KB twice.
        let same = embedded == file
        #expect(same, """
            Sources/Admin/OpenAPIDocument.swift (\(embedded.count) bytes) differs from docs/openapi.yaml \
            (\(file.count) bytes) from line \(Self.firstDifferingLine(embedded, file)): run Scripts/gen-openapi
            """)
    }

    /// The 1-based line where `a` and `b` first differ.
    static func firstDifferingLine(_ a: [UInt8], _ b: [UInt8]) -> Int {
        let prefix = zip(a, b).prefix { $0 == $1 }.count
        return a.prefix(prefix).count { $0 == UInt8(ascii: "\n") } + 1
    }

    @Test func theAdminListenerServesIt() throws {
        let proxy = try TestProxy(upstreamPort: try closedPort()) {
            $0.adminListen = SocketAddressSpec(host: "127.0.0.1", port: 0)
        }
        let admin = try #require(proxy.server.adminPort)
        let file = try Self.documentFile()

        let r = try sendRequest(admin, method: "GET", path: "/openapi.yaml")
        #expect(r.status == 200)
        #expect(r.header("content-type") == "application/yaml")
        #expect(r.header("content-length") == "\(file.count)")
        let same = r.body == file
        #expect(same, "GET /openapi.yaml is not docs/openapi.yaml from line \(Self.firstDifferingLine(r.body, file))")

        let head = try sendRequest(admin, method: "HEAD", path: "/openapi.yaml")
        #expect(head.status == 200)
        #expect(head.header("content-type") == "application/yaml")
        #expect(head.header("content-length") == "\(file.count)")
        #expect(head.body.isEmpty)

        // Only on the admin listener, and only GET and HEAD.
        expectJSONError(try sendRequest(admin, method: "POST", path: "/openapi.yaml"), status: 404, code: "not_found")
        expectJSONError(try sendRequest(proxy.port, method: "GET", path: "/openapi.yaml"), status: 502)
    }
}
