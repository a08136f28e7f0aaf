import COpenSSL

#if canImport(Glibc)
import Glibc
#endif

/// Why a TLS client context could not be made (an unreadable `ca_file`).
public struct TLSSetupError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// What every TLS client connection of one peer shares: the trust store
/// (the system's plus an optional `ca_file`), peer verification, TLS 1.2 as
/// the floor. One per upstream or callback route, shared by all loops:
/// OpenSSL allows `SSL_new` on one configured `SSL_CTX` from any thread.
public final class TLSClientContext: @unchecked Sendable {
    /// `SSL_CTX *`; never changed after `init`.
    let raw: OpaquePointer

    public init(caFile: String?) throws(TLSSetupError) {
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw TLSSetupError(description: "tls: cannot create a context: \(tlsErrorReason())")
        }
        raw = ctx
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        _ = COpenSSL_set_min_tls12(ctx)
        _ = COpenSSL_set_partial_writes(ctx)
        _ = COpenSSL_set_read_ahead(ctx)
        // The system's trust store is always used (SPEC §6); a missing one
        // leaves only `ca_file`.
        _ = SSL_CTX_set_default_verify_paths(ctx)
        ERR_clear_error()
        if let caFile {
            guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
                throw TLSSetupError(description: "ca_file \(caFile): \(tlsErrorReason())")
            }
        }
    }

    deinit { SSL_CTX_free(raw) }
}

/// One TLS client session over a connected socket: the handshake, then
/// reads and writes of plaintext. Owned by its `Channel`.
final class TLSSession {
    /// `SSL *`, freed with the session.
    let ssl: OpaquePointer
    /// Why the handshake failed, for the log and the job's error.
    private(set) var failure: String?

    /// The context's settings plus this peer's name: sent as SNI (unless an
    /// IP literal) and checked against the certificate.
    init?(context: TLSClientContext, fd: Int32, serverName: String) {
        guard let ssl = SSL_new(context.raw) else { return nil }
        self.ssl = ssl
        SSL_set_fd(ssl, fd)
        SSL_set_connect_state(ssl)
        if isIPLiteral(serverName) {
            X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), serverName)
        } else {
            _ = COpenSSL_set_sni(ssl, serverName)
            SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            SSL_set1_host(ssl, serverName)
        }
    }

    deinit { SSL_free(ssl) }

    enum Progress { case done, wantRead, wantWrite, failed }

    /// Advances the handshake; on `.failed`, `failure` says why.
    func handshake() -> Progress {
        ERR_clear_error()
        let rc = SSL_do_handshake(ssl)
        if rc == 1 { return .done }
        switch SSL_get_error(ssl, rc) {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case let code:
            failure = describeHandshakeFailure(code: code)
            return .failed
        }
    }

    private func describeHandshakeFailure(code: Int32) -> String {
        let verify = SSL_get_verify_result(ssl)
        if verify != X509_V_OK {
            return "tls: certificate verify failed: \(String(cString: X509_verify_cert_error_string(verify)))"
        }
        if code == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 {
            return "tls: handshake failed: the peer closed the connection"
        }
        return "tls: handshake failed: \(tlsErrorReason())"
    }

    enum IOResult: Equatable {
        /// This many plaintext bytes read or written.
        case bytes(Int)
        case wantRead, wantWrite
        /// The peer ended the session (close_notify, or the socket closed).
        case closed
        /// A fatal error (errno, or EPROTO for a TLS error).
        case failed(Int32)
    }

    func read(into buffer: UnsafeMutableRawPointer, count: Int) -> IOResult {
        ERR_clear_error()
        var n = 0
        if SSL_read_ex(ssl, buffer, count, &n) == 1 { return .bytes(n) }
        return result(of: SSL_get_error(ssl, 0))
    }

    func write(_ bytes: UnsafeRawPointer, count: Int) -> IOResult {
        ERR_clear_error()
        var n = 0
        if SSL_write_ex(ssl, bytes, count, &n) == 1 { return .bytes(n) }
        return result(of: SSL_get_error(ssl, 0))
    }

    private func result(of code: Int32) -> IOResult {
        switch code {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .closed
        case SSL_ERROR_SYSCALL:
            // An EOF without close_notify reads as the peer closing: HTTP's
            // own framing tells a truncated message from a whole one.
            let e = errno
            if ERR_peek_error() != 0 { return .failed(EPROTO) }
            return e == 0 ? .closed : .failed(e)
        default:
            return .failed(EPROTO)
        }
    }

    /// Bytes already inside OpenSSL, decrypted or not (read ahead with an
    /// earlier record): no socket event will announce them.
    var hasPendingInput: Bool { SSL_has_pending(ssl) == 1 }

    /// Sends close_notify once, without waiting for the peer's.
    func shutdown() {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
    }
}

/// The reason of the oldest error on this thread's OpenSSL queue.
private func tlsErrorReason() -> String {
    let code = ERR_get_error()
    ERR_clear_error()
    guard code != 0 else { return "unknown error" }
    if let reason = ERR_reason_error_string(code) { return String(cString: reason) }
    return "error \(code)"
}

private func isIPLiteral(_ host: String) -> Bool {
    var address = [UInt8](repeating: 0, count: 16)
    return inet_pton(AF_INET, host, &address) == 1 || inet_pton(AF_INET6, host, &address) == 1
}
