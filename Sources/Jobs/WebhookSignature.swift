import Crypto
import Foundation

/// Standard Webhooks signatures (SPEC §4): `v1,` + base64 of
/// HMAC-SHA256(key, "{id}.{timestamp}.{body}"), one per secret,
/// space-separated. The body is fed in pieces, so a result of any size is
/// signed without holding it whole.
struct WebhookSigner {
    private var macs: [HMAC<SHA256>]

    init(secrets: [String], id: String, timestamp: Int64) {
        macs = secrets.map { HMAC<SHA256>(key: SymmetricKey(data: Self.key(of: $0))) }
        let prefix = Array("\(id).\(timestamp).".utf8)
        for i in macs.indices { macs[i].update(data: prefix) }
    }

    /// A secret's key bytes: `whsec_` + base64, else the secret's own bytes.
    static func key(of secret: String) -> [UInt8] {
        if secret.hasPrefix("whsec_"), let data = Data(base64Encoded: String(secret.dropFirst(6))) {
            return Array(data)
        }
        return Array(secret.utf8)
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        for i in macs.indices { macs[i].update(data: bytes) }
    }

    /// The `webhook-signature` header value.
    func finalize() -> String {
        macs.map { "v1," + Data($0.finalize()).base64EncodedString() }.joined(separator: " ")
    }

    static func sign(secrets: [String], id: String, timestamp: Int64, body: [UInt8]) -> String {
        var signer = WebhookSigner(secrets: secrets, id: id, timestamp: timestamp)
        body.withUnsafeBytes { signer.update($0) }
        return signer.finalize()
    }
}
