import CLibevent
public import Loop

#if canImport(Glibc)
import Glibc
#endif

/// What a channel reports to its owner; all calls on the channel's loop.
public protocol ChannelDelegate: AnyObject {
    /// New bytes are in `input`.
    func channelReadable(_ channel: Channel)
    /// A write-readiness flush left `output` at or below the low-water mark.
    func channelWritable(_ channel: Channel)
    /// The peer closed (`error == 0`) or the socket failed (`error` = errno).
    func channelClosed(_ channel: Channel, error: Int32)
    /// An outgoing connect finished (`error == 0`) or failed.
    func channelConnected(_ channel: Channel, error: Int32)
}

/// A non-blocking TCP socket on one loop with an input and an output
/// `evbuffer`: libevent's events and buffers without the bufferevent layer.
///
/// Why not bufferevents: per proxied request they cost an `ioctl(FIONREAD)`
/// before every read and an `epoll_ctl` pair for every write. Here a read is
/// one `readv` into reserved buffer space, and output is written at once
/// (`flush`), arming write readiness only for what the socket did not take.
public final class Channel {
    public let fd: Int32
    public let input = EventBuffer()
    public let output = EventBuffer()
    /// The same two buffers for this layer's own calls: no reference to
    /// count on the per-request path.
    let rawInput: OpaquePointer
    let rawOutput: OpaquePointer
    /// Strong (a weak reference would put every retain of the owner on
    /// Swift's slow side-table path); `close()` breaks the cycle.
    public var delegate: (any ChannelDelegate)?
    /// Reading pauses while `input` holds this much (0: no limit).
    public var inputHighWater = 0
    /// `channelWritable` fires when a readiness flush leaves this much or less.
    public var outputLowWater = 64 * 1024
    /// The owner waits for `channelWritable`: it comes from write readiness
    /// even when a direct `flush` already emptied the buffer, so the owner is
    /// never called back from inside its own write.
    public var wantsWritable = false
    public static let readSize = 64 * 1024
    /// The first read after a pause asks for this little: with libevent's
    /// chain header it is a 1 KiB allocation, which malloc serves from its
    /// per-thread cache, where a 64 KiB one takes the slow path each time an
    /// emptied buffer frees its chain. A read that fills it switches to
    /// `readSize` reads until one comes back small again (bodies stream).
    public static let smallReadSize = 960

    private var readEvent: OpaquePointer!
    private var writeEvent: OpaquePointer!
    private var flushEvent: OpaquePointer!
    private var flushScheduled = false
    private var readWanted = false
    /// Mirrors whether `readEvent` is added, to skip redundant event calls.
    private var readArmed = false
    /// Where an outgoing connection stands; accepted sockets start `open`.
    private enum Link: UInt8 {
        /// `connect` is under way: the first write readiness reports it.
        case connecting
        /// Connected, the TLS handshake under way: `channelConnected` waits for it.
        case handshaking
        case open
    }
    private var link = Link.open
    /// The last read filled its room: the peer is sending a lot.
    private var bulkReads = false
    public private(set) var isClosed = false
    /// Bytes written to the socket so far (wrapping).
    public private(set) var bytesWritten = 0

    /// Bytes the peer has taken so far (wrapping): those written less what
    /// the socket's send queue still holds. Whether a slow reader reads:
    /// the writes themselves come in bursts, as the kernel frees send
    /// buffer space in large steps. One ioctl; for timers, not per write.
    public var bytesDelivered: Int {
        bytesWritten &- max(0, Int(CLibevent_unsent_bytes(fd)))
    }
    /// TLS over the socket (an `https://` peer); nil for plain TCP.
    private var tls: TLSSession?
    /// Why the TLS handshake failed (`tls: certificate verify failed: ...`).
    public var tlsFailure: String? { tls?.failure }

    /// The loop whose base the events belong to: it must outlive them.
    private let loop: EventLoop

    /// Takes ownership of `fd` (closed by `close()` or `deinit`).
    public init(loop: EventLoop, fd: Int32) {
        self.fd = fd
        self.loop = loop
        self.rawInput = input.raw
        self.rawOutput = output.raw
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        let ctx = Unmanaged.passUnretained(self).toOpaque()
        // Each trampoline holds the channel for the whole callback: the
        // owner may drop its last reference from inside it.
        readEvent = event_new(loop.base, fd, Int16(EV_READ | EV_PERSIST), { _, _, ctx in
            let channel = Unmanaged<Channel>.fromOpaque(ctx!).takeUnretainedValue()
            withExtendedLifetime(channel) { channel.readReady() }
        }, ctx)
        writeEvent = event_new(loop.base, fd, Int16(EV_WRITE | EV_PERSIST), { _, _, ctx in
            let channel = Unmanaged<Channel>.fromOpaque(ctx!).takeUnretainedValue()
            withExtendedLifetime(channel) { channel.writeReady() }
        }, ctx)
        flushEvent = event_new(loop.base, -1, 0, { _, _, ctx in
            let channel = Unmanaged<Channel>.fromOpaque(ctx!).takeUnretainedValue()
            withExtendedLifetime(channel) {
                channel.flush()
            }
        }, ctx)
    }

    /// A new socket connecting to `address`; `channelConnected` follows,
    /// after the TLS handshake with `serverName` when `tls` is given.
    public static func connect(
        loop: EventLoop, to address: ResolvedAddress, tls: TLSClientContext? = nil, serverName: String = ""
    ) -> Channel? {
        var address = address
        let family = Int32(address.storage.ss_family)
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        let channel = Channel(loop: loop, fd: fd)
        if let tls {
            guard let session = TLSSession(context: tls, fd: fd, serverName: serverName) else { return nil }
            channel.tls = session
        }
        let rc = address.withSockaddr { Glibc.connect(fd, $0, socklen_t($1)) }
        if rc != 0 && errno != EINPROGRESS {
            channel.pendingConnectError = errno
        }
        channel.link = .connecting
        event_add(channel.writeEvent, nil)
        return channel
    }

    private var pendingConnectError: Int32 = 0

    deinit {
        close()
        event_free(readEvent)
        event_free(writeEvent)
        event_free(flushEvent)
    }

    // MARK: Reading

    public func startReading() {
        guard !isClosed else { return }
        readWanted = true
        armRead()
    }

    public func stopReading() {
        readWanted = false
        disarmRead()
    }

    private func disarmRead() {
        if readArmed {
            readArmed = false
            event_del(readEvent)
        }
    }

    /// Call after consuming input: reading resumes if it paused at the high-water mark.
    public func inputConsumed() {
        if readWanted { armRead() }
    }

    private func armRead() {
        guard !isClosed else { return }
        if inputHighWater > 0 && evbuffer_get_length(rawInput) >= inputHighWater {
            disarmRead()
        } else if !readArmed {
            readArmed = true
            event_add(readEvent, nil)
            if let tls, tls.hasPendingInput { event_active(readEvent, EV_READ, 0) }
        }
    }

    private func readReady() {
        if link == .handshaking {
            continueHandshake()
            return
        }
        var room = bulkReads ? Channel.readSize : Channel.smallReadSize
        if inputHighWater > 0 {
            room = min(room, inputHighWater - evbuffer_get_length(rawInput))
            if room <= 0 {
                disarmRead()
                return
            }
        }
        // One contiguous extent, one recv(2): cheaper than readv over two.
        var extent = iovec()
        guard evbuffer_reserve_space(rawInput, room, &extent, 1) == 1 else { return }
        if let tls {
            readTLS(tls, into: &extent, room: room)
            return
        }
        let n = recv(fd, extent.iov_base, min(extent.iov_len, room), 0)
        if n > 0 {
            bulkReads = n >= Channel.smallReadSize
            extent.iov_len = n
            evbuffer_commit_space(rawInput, &extent, 1)
            if inputHighWater > 0 && evbuffer_get_length(rawInput) >= inputHighWater {
                disarmRead()
            }
            delegate?.channelReadable(self)
        } else if n == 0 {
            disarmRead()
            readWanted = false
            delegate?.channelClosed(self, error: 0)
        } else if errno != EAGAIN && errno != EINTR {
            let e = errno
            disarmRead()
            readWanted = false
            delegate?.channelClosed(self, error: e)
        }
    }

    // MARK: Writing

    /// Writes what `output` holds now; the rest goes on write readiness.
    public func flush() {
        if flushScheduled {
            // Written now: the deferred flush has nothing left to do.
            flushScheduled = false
            event_del(flushEvent)
        }
        guard !isClosed, link == .open, evbuffer_get_length(rawOutput) > 0 else { return }
        let n = tls == nil ? evbuffer_write(rawOutput, fd) : writeTLS()
        if n < 0 && errno != EAGAIN && errno != EINTR {
            failWrite(errno)
            return
        }
        if n > 0 { bytesWritten &+= Int(n) }
        if (evbuffer_get_length(rawOutput) > 0 || wantsWritable) && event_pending(writeEvent, Int16(EV_WRITE), nil) == 0 {
            event_add(writeEvent, nil)
        }
    }

    /// Writes `bytes` behind what `output` holds, like appending them and
    /// calling `flush`. With nothing queued (a request head on a pooled
    /// connection, the usual case) they go straight to the socket: no
    /// evbuffer chain is allocated, filled and freed for them. What the
    /// socket does not take is queued for write readiness.
    public func write(_ bytes: UnsafeBufferPointer<UInt8>) {
        guard !isClosed, let base = bytes.baseAddress, bytes.count > 0 else { return }
        guard link == .open, tls == nil, evbuffer_get_length(rawOutput) == 0 else {
            evbuffer_add(rawOutput, base, bytes.count)
            flush()
            return
        }
        if flushScheduled {
            flushScheduled = false
            event_del(flushEvent)
        }
        var n = Glibc.write(fd, base, bytes.count)
        if n < 0 {
            guard errno == EAGAIN || errno == EINTR else {
                failWrite(errno)
                return
            }
            n = 0
        }
        bytesWritten &+= n
        if n < bytes.count { evbuffer_add(rawOutput, base + n, bytes.count - n) }
        if (n < bytes.count || wantsWritable) && event_pending(writeEvent, Int16(EV_WRITE), nil) == 0 {
            event_add(writeEvent, nil)
        }
    }

    /// Flushes once the current callbacks are done, in this loop turn: a
    /// head, body and end produced by one callback leave in one `writev`.
    public func flushSoon() {
        guard !flushScheduled, !isClosed else { return }
        flushScheduled = true
        event_active(flushEvent, 0, 0)
    }

    public var pendingOutput: Int { evbuffer_get_length(rawOutput) }

    private func writeReady() {
        if link == .connecting {
            link = .open
            var error = pendingConnectError
            if error == 0 {
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len)
            }
            if error == 0 && tls != nil {
                link = .handshaking
                continueHandshake()
                return
            }
            if evbuffer_get_length(rawOutput) == 0 { event_del(writeEvent) }
            delegate?.channelConnected(self, error: error)
            if error == 0 && !isClosed { flush() }
            return
        }
        if link == .handshaking {
            continueHandshake()
            return
        }
        if evbuffer_get_length(rawOutput) > 0 {
            let n = tls == nil ? evbuffer_write(rawOutput, fd) : writeTLS()
            if n < 0 && errno != EAGAIN && errno != EINTR {
                failWrite(errno)
                return
            }
            if n > 0 { bytesWritten &+= Int(n) }
        }
        let left = evbuffer_get_length(rawOutput)
        if left == 0 { event_del(writeEvent) }
        if left <= outputLowWater {
            wantsWritable = false
            delegate?.channelWritable(self)
        }
    }

    private func failWrite(_ error: Int32) {
        event_del(writeEvent)
        delegate?.channelClosed(self, error: error)
    }

    /// Half-close: no more output; reading goes on.
    public func shutdownOutput() {
        guard !isClosed else { return }
        tls?.shutdown()
        shutdown(fd, Int32(SHUT_WR))
    }

    public func close() {
        guard !isClosed else { return }
        isClosed = true
        delegate = nil
        disarmRead()
        event_del(writeEvent)
        event_del(flushEvent)
        if link == .open { tls?.shutdown() }
        Glibc.close(fd)
    }

    // MARK: TLS

    /// Drives the handshake on read and write readiness; reports
    /// `channelConnected` when it is done or has failed.
    private func continueHandshake() {
        guard let tls, !isClosed else { return }
        switch tls.handshake() {
        case .wantRead:
            event_del(writeEvent)
            if !readArmed {
                readArmed = true
                event_add(readEvent, nil)
            }
        case .wantWrite:
            event_add(writeEvent, nil)
        case .done:
            link = .open
            if !readWanted { disarmRead() }
            if evbuffer_get_length(rawOutput) == 0 { event_del(writeEvent) }
            delegate?.channelConnected(self, error: 0)
            if !isClosed { flush() }
        case .failed:
            link = .open
            disarmRead()
            event_del(writeEvent)
            delegate?.channelConnected(self, error: EPROTO)
        }
    }

    /// One `SSL_read` into the reserved extent: the TLS form of the plain
    /// `recv` above. Plaintext left inside OpenSSL brings the read event
    /// back in this loop turn.
    private func readTLS(_ tls: TLSSession, into extent: inout iovec, room: Int) {
        switch tls.read(into: extent.iov_base, count: min(extent.iov_len, room)) {
        case .bytes(let n):
            bulkReads = n >= Channel.smallReadSize
            extent.iov_len = n
            evbuffer_commit_space(rawInput, &extent, 1)
            if inputHighWater > 0 && evbuffer_get_length(rawInput) >= inputHighWater {
                disarmRead()
            } else if tls.hasPendingInput {
                event_active(readEvent, EV_READ, 0)
            }
            delegate?.channelReadable(self)
            // A write that waited for the peer's record can go on now.
            if !isClosed && evbuffer_get_length(rawOutput) > 0 { flush() }
        case .wantRead, .wantWrite:
            break
        case .closed:
            disarmRead()
            readWanted = false
            delegate?.channelClosed(self, error: 0)
        case .failed(let e):
            disarmRead()
            readWanted = false
            delegate?.channelClosed(self, error: e)
        }
    }

    /// Writes `output` through TLS until it is empty or the socket is full,
    /// in records of up to 16 KiB; -1 with `errno` set on a fatal error or
    /// when nothing could be written.
    private func writeTLS() -> Int32 {
        guard let tls else { return -1 }
        var total = 0
        while true {
            let length = evbuffer_get_length(rawOutput)
            if length == 0 { return Int32(clamping: total) }
            // Small pieces (a head, a chunk header) leave as one record.
            let count = min(length, 16 * 1024)
            guard let bytes = evbuffer_pullup(rawOutput, count) else { return Int32(clamping: total) }
            switch tls.write(bytes, count: count) {
            case .bytes(let n):
                evbuffer_drain(rawOutput, n)
                total += n
            case .wantRead, .wantWrite:
                errno = EAGAIN
                return total > 0 ? Int32(clamping: total) : -1
            case .closed:
                errno = EPIPE
                return -1
            case .failed(let e):
                errno = e
                return -1
            }
        }
    }
}

/// Sets TCP_NODELAY: heads and small bodies must not wait for Nagle.
func setNoDelay(_ fd: Int32) {
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
}
