import Foundation
import TestSupport
import Testing

// Helpers for the engine tests (issue "The engine"): SPEC §6 JSON error
// checks and canned upstream scripts.

/// SPEC §6: an error the proxy makes itself is `{"error":{"code":"...","message":"..."}}`.
func expectJSONError(_ r: Response, status: Int? = nil, code: String? = nil,
                     sourceLocation: SourceLocation = #_sourceLocation) {
    if let status {
        #expect(r.status == status, "status", sourceLocation: sourceLocation)
    }
    #expect(r.header("content-type")?.lowercased().hasPrefix("application/json") == true,
            "Content-Type \(r.header("content-type") ?? "none")", sourceLocation: sourceLocation)
    #expect(r.text.hasPrefix("{\"error\":{\"code\":\""), "body \(r.text)", sourceLocation: sourceLocation)
    let object = try? JSONSerialization.jsonObject(with: Data(r.body)) as? [String: Any]
    let error = object?["error"] as? [String: Any]
    let gotCode = error?["code"] as? String
    #expect(gotCode?.isEmpty == false, "error.code in \(r.text)", sourceLocation: sourceLocation)
    #expect(error?["message"] is String, "error.message in \(r.text)", sourceLocation: sourceLocation)
    if let code {
        #expect(gotCode == code, "error.code in \(r.text)", sourceLocation: sourceLocation)
    }
}

/// An upstream answer that never comes: records and keeps reading.
let neverReply: @Sendable ([UInt8]) -> [UInt8]? = { _ in nil }

let okReply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
