public import HTTP

/// Upstream request heads, re-serialized from parsed, validated parts
/// (SPEC §6): never the client's raw bytes.
public enum RequestSerializer {
    /// Without `framing`, the head stops after the end-to-end fields: a job
    /// adds its own `Job-Id`, `Job-Attempt`, length and blank line per attempt.
    public static func write(request r: MessageReader, peer: [UInt8], target: UpstreamTarget, into w: ByteWriter,
                      framing: Bool = true) {
        w.reset()
        w.append(r.methodName)
        w.append(byte: 0x20)
        let path = r.path
        w.append(target.pathPrefix)
        if path.first != UInt8(ascii: "/") && !(path.count == 1 && path[0] == UInt8(ascii: "*")) {
            w.append(byte: UInt8(ascii: "/"))
        }
        if !(path.count == 1 && path[0] == UInt8(ascii: "*") && !target.pathPrefix.isEmpty) {
            w.append(path)
        }
        w.append(" HTTP/1.1\r\n")
        var forwardedFor = 0
        for f in r.fields {
            switch f.kind {
            case .xForwardedFor:
                forwardedFor += 1  // merged below, with the peer appended
                continue
            case .xForwardedProto, .xForwardedHost, .expect:
                continue
            case .host:
                break  // never dropped, even if Connection names it
            default:
                if f.kind.isHopByHop || r.isNominatedByConnection(f) { continue }
                // A job's request gets the proxy's Job-Id and Job-Attempt,
                // never a client's (a backend deduplicates on them).
                if !framing && isJobHeader(r.name(f)) { continue }
            }
            w.header(r.name(f), r.value(f))
        }
        w.append("X-Forwarded-For: ")
        if forwardedFor > 0 {
            for f in r.fields where f.kind == .xForwardedFor && f.valueEnd > f.valueStart {
                w.append(r.value(f))
                w.append(", ")
            }
        }
        w.append(peer)
        w.append("\r\nX-Forwarded-Proto: http\r\n")
        if let host = r.hostValue {
            w.header("X-Forwarded-Host", host)
        }
        guard framing else { return }
        switch r.framing {
        case .length(let n): w.header("Content-Length", decimal: n)
        case .chunked: w.header("Transfer-Encoding", "chunked")
        default:
            // A request method whose semantics expect a body gets an explicit 0.
            if r.declaredContentLength != nil { w.header("Content-Length", "0") }
        }
        w.append("\r\n")
    }
}

/// End-to-end response headers for the client; framing and Connection are
/// the server connection's to write.
public enum ResponseSerializer {
    public static func writeHeaders(of r: MessageReader, into w: ByteWriter) {
        for f in r.fields {
            if f.kind.isHopByHop || r.isNominatedByConnection(f) { continue }
            w.header(r.name(f), r.value(f))
        }
    }
}

/// `Job-Id` or `Job-Attempt`, any case.
func isJobHeader(_ name: UnsafeBufferPointer<UInt8>) -> Bool {
    headerName(name, equals: "job-id") || headerName(name, equals: "job-attempt")
}
