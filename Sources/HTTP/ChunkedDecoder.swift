import CLibevent

/// RFC 9112 §7.1 chunked decoding, strictly: a size is 1*HEXDIG (no sign,
/// no `0x`, at most 15 digits), extensions are skipped to the line's end,
/// chunk data must be followed by exactly CRLF, trailer fields are checked
/// like header fields (a token, a colon, a value without CTLs; no obs-fold)
/// and dropped, up to a size limit. Debian's http_parser is built non-strict and
/// accepts any two bytes after chunk data, which would let a client re-frame
/// a body, so bodies are decoded here.
struct ChunkedDecoder {
    enum State {
        case size          // reading hex digits
        case chunkExtension // after ';' up to CR
        case sizeLF        // CR seen after the size line
        case data          // `remaining` bytes of chunk data
        case dataCR        // expecting CR after data
        case dataLF
        case trailerLineStart
        case trailerName   // inside a trailer field's name
        case trailerValue  // after its colon
        case trailerLF     // CR seen in a trailer line
        case finalLF       // CR of the empty line ending the trailers seen
        case done
    }

    private(set) var state = State.size
    private var size: UInt64 = 0
    private var digits = 0
    private var remaining: UInt64 = 0
    private var trailerBytes = 0
    static let maxTrailerBytes = 16 * 1024

    var isDone: Bool { state == .done }

    mutating func reset() {
        state = .size
        size = 0
        digits = 0
        remaining = 0
        trailerBytes = 0
    }

    /// Decodes from the front of `input` into `output`, draining what it
    /// used. Returns false on a framing error.
    mutating func decode(from input: OpaquePointer, into output: OpaquePointer) -> Bool {
        while state != .done {
            if state == .data {
                let available = UInt64(evbuffer_get_length(input))
                if available == 0 { return true }
                let n = Int(min(available, remaining))
                evbuffer_remove_buffer(input, output, n)
                remaining -= UInt64(n)
                if remaining == 0 { state = .dataCR }
                continue
            }
            // Framing bytes: one contiguous run at a time.
            var chain = iovec()
            guard evbuffer_peek(input, -1, nil, &chain, 1) > 0, chain.iov_len > 0 else { return true }
            let p = chain.iov_base.assumingMemoryBound(to: UInt8.self)
            var used = 0
            while used < chain.iov_len && state != .data && state != .done {
                guard step(p[used]) else { return false }
                used += 1
            }
            evbuffer_drain(input, used)
        }
        return true
    }

    private mutating func step(_ c: UInt8) -> Bool {
        switch state {
        case .size:
            if let v = hexValue(c) {
                digits += 1
                if digits > 15 { return false }
                size = size << 4 | UInt64(v)
                return true
            }
            guard digits > 0 else { return false }
            if c == 0x0D { state = .sizeLF; return true }
            if c == UInt8(ascii: ";") { state = .chunkExtension; return true }
            return false
        case .chunkExtension:
            if c == 0x0D { state = .sizeLF; return true }
            // Extension bytes: visible ASCII, obs-text, SP, HTAB; never LF or NUL.
            return c == 0x09 || c >= 0x20 && c != 0x7F
        case .sizeLF:
            guard c == 0x0A else { return false }
            if size == 0 {
                state = .trailerLineStart
            } else {
                remaining = size
                state = .data
            }
            size = 0
            digits = 0
            return true
        case .dataCR:
            guard c == 0x0D else { return false }
            state = .dataLF
            return true
        case .dataLF:
            guard c == 0x0A else { return false }
            state = .size
            return true
        case .trailerLineStart:
            if c == 0x0D { state = .finalLF; return true }
            // A name: no empty one, no obs-fold (a line starting with SP/HTAB).
            guard isTchar(c) else { return false }
            state = .trailerName
            return countTrailer()
        case .trailerName:
            if c == UInt8(ascii: ":") {
                state = .trailerValue
            } else if !isTchar(c) {
                return false  // whitespace before the colon, or not a token
            }
            return countTrailer()
        case .trailerValue:
            if c == 0x0D { state = .trailerLF; return true }
            // VCHAR, obs-text, SP, HTAB (RFC 9110 §5.5): no CTL, no DEL.
            guard c == 0x09 || c >= 0x20 && c != 0x7F else { return false }
            return countTrailer()
        case .trailerLF:
            guard c == 0x0A else { return false }
            state = .trailerLineStart
            return true
        case .finalLF:
            guard c == 0x0A else { return false }
            state = .done
            return true
        case .data, .done:
            return false
        }
    }

    private mutating func countTrailer() -> Bool {
        trailerBytes += 1
        return trailerBytes <= ChunkedDecoder.maxTrailerBytes
    }
}

@inline(__always)
private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
    case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
    case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
    default: return nil
    }
}
