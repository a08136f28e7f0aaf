import CLibevent

#if canImport(Glibc)
import Glibc
#endif

/// A libevent `evbuffer`, owned: made with the object, freed with it. The
/// one way the layers above HTTP hold bytes on their way to or from a
/// socket (bodies, spools, pending request bytes); moving bytes between two
/// of them moves chain segments, never copies.
///
/// Confined to one loop, like the connections that hand them out.
public final class EventBuffer {
    let raw: OpaquePointer

    public init() {
        raw = evbuffer_new()
    }

    deinit {
        evbuffer_free(raw)
    }

    /// Bytes held.
    @inline(__always)
    public var count: Int { evbuffer_get_length(raw) }

    @inline(__always)
    public var isEmpty: Bool { evbuffer_get_length(raw) == 0 }

    public func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        evbuffer_add(raw, bytes.baseAddress, bytes.count)
    }

    public func append(_ bytes: UnsafeBufferPointer<UInt8>) {
        append(UnsafeRawBufferPointer(bytes))
    }

    public func append(_ text: StaticString) {
        evbuffer_add(raw, text.utf8Start, text.utf8CodeUnitCount)
    }

    /// Moves every byte of `other` to the end of this buffer.
    @inline(__always)
    public func moveAll(from other: EventBuffer) {
        evbuffer_add_buffer(raw, other.raw)
    }

    /// Moves every byte of `other` here as one chunk of a chunked body
    /// (`SIZE\r\n`, the bytes, `\r\n`).
    public func moveAsChunk(from other: EventBuffer) {
        CLibevent_evbuffer_add_chunk_header(raw, evbuffer_get_length(other.raw))
        evbuffer_add_buffer(raw, other.raw)
        evbuffer_add(raw, "\r\n", 2)
    }

    /// `0\r\n\r\n`: the end of a chunked body.
    public func appendLastChunk() {
        evbuffer_add(raw, "0\r\n\r\n", 5)
    }

    /// Appends `length` bytes of the open file `fd` from `offset`, sent
    /// with sendfile or mmap, never read into memory; the buffer owns and
    /// closes `fd` once added. False (and `fd` still the caller's) if not.
    public func appendFile(_ fd: Int32, offset: Int64 = 0, length: Int64) -> Bool {
        evbuffer_add_file(raw, fd, offset, length) == 0
    }

    public func drain(_ n: Int) {
        evbuffer_drain(raw, n)
    }

    public func removeAll() {
        evbuffer_drain(raw, evbuffer_get_length(raw))
    }

    /// Removes and returns every byte.
    public func takeBytes() -> [UInt8] {
        let n = evbuffer_get_length(raw)
        var bytes = [UInt8](repeating: 0, count: n)
        if n > 0 { _ = bytes.withUnsafeMutableBytes { evbuffer_remove(raw, $0.baseAddress, n) } }
        return bytes
    }

    /// Calls `body` with each contiguous segment, in order, without copying.
    public func forEachSegment(_ body: (UnsafeRawBufferPointer) -> Void) {
        let count = evbuffer_peek(raw, -1, nil, nil, 0)
        guard count > 0 else { return }
        var vecs = [iovec](repeating: iovec(), count: Int(count))
        _ = evbuffer_peek(raw, -1, nil, &vecs, count)
        for v in vecs { body(UnsafeRawBufferPointer(start: v.iov_base, count: v.iov_len)) }
    }

    /// Writes (and removes) as much as `fd` takes: the count, or -1 with `errno`.
    public func write(to fd: Int32) -> Int {
        Int(evbuffer_write(raw, fd))
    }
}
