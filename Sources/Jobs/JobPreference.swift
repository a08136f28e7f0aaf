package import HTTP

/// What a request's RFC 7240 `Prefer` asks of a job route. Package-visible
/// (with its parser) so the fuzz target reads values as the intake does.
package enum JobPreference: Equatable {
    case absent
    case respondAsync
    /// Seconds, already capped by `jobs.max_wait`.
    case wait(Int)

    /// RFC 7240 `Prefer`: respond-async, or wait=N seconds. Both together
    /// (RFC 7240 §4.1's own example, `respond-async, wait=10`, and OData's
    /// reading) are a bounded wait: the response if it comes within N
    /// seconds, else 202, so fast requests skip the poll. The first `wait`
    /// counts.
    package init(of r: MessageReader, maxWait: Duration) {
        var result = JobPreference.absent
        for f in r.fields where headerName(r.name(f), equals: "prefer") {
            forEachPreference(r.value(f)) { token in
                if headerName(token, equals: "respond-async") {
                    if result == .absent { result = .respondAsync }
                } else if token.count > 5, headerName(UnsafeBufferPointer(rebasing: token[0..<5]), equals: "wait="),
                          let n = parseSeconds(UnsafeBufferPointer(rebasing: token[5...])),
                          result == .absent || result == .respondAsync {
                    let cap = Int(maxWait.components.seconds)
                    result = .wait(min(n, cap))
                }
            }
        }
        self = result
    }
}

/// Calls `body` with each preference token of a Prefer value
/// (`respond-async`, `wait=10`), parameters after `;` ignored.
func forEachPreference(_ value: UnsafeBufferPointer<UInt8>, _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
    forEachToken(value) { token in
        var end = token.firstIndex(of: UInt8(ascii: ";")) ?? token.count
        while end > 0 && (token[end - 1] == 0x20 || token[end - 1] == 0x09) { end -= 1 }
        if end > 0 { body(UnsafeBufferPointer(rebasing: token[0..<end])) }
    }
}
