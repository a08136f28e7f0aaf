import Crypto

/// SHA-256 over a request's identity, fed in pieces as the body streams
/// by: what an Idempotency-Key is checked against (method, path, body and
/// the `bind_to` credential), and how credentials are kept (SPEC §5: by a
/// hash, never the value).
public struct Fingerprint {
    private var hash = SHA256()

    public init() {}

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        hash.update(bufferPointer: bytes)
    }

    public mutating func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { hash.update(bufferPointer: $0) }
    }

    /// A field separator, so ("ab", "c") and ("a", "bc") differ.
    public mutating func separate() {
        update([0])
    }

    public func finish() -> [UInt8] {
        Array(hash.finalize())
    }

    /// The kept form of a credential.
    public static func credential(_ value: UnsafeRawBufferPointer) -> [UInt8] {
        var f = Fingerprint()
        f.update(value)
        return f.finish()
    }
}
