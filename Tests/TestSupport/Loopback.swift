#if canImport(Glibc)
import Glibc
#endif

// Every socket the tests open is on 127.0.0.1: one way to bind, one way to
// connect.

private func loopbackAddress(port: Int) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = UInt16(port).bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    return addr
}

/// A TCP socket bound to 127.0.0.1 on a port the kernel picks, listening if
/// `backlog` is given: its descriptor and port.
public func bindLoopback(listen backlog: Int32? = nil) throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestError("socket failed: errno \(errno)") }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = loopbackAddress(port: 0)
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        close(fd)
        throw TestError("bind failed: errno \(errno)")
    }
    if let backlog, listen(fd, backlog) != 0 {
        close(fd)
        throw TestError("listen failed: errno \(errno)")
    }
    var bound = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
    }
    return (fd, Int(UInt16(bigEndian: bound.sin_port)))
}

/// A port on 127.0.0.1 with nothing listening: connecting to it is refused.
public func closedPort() throws -> Int {
    let (fd, port) = try bindLoopback()
    close(fd)
    return port
}

/// A blocking TCP socket connected to 127.0.0.1:`port`.
public func connectLoopback(port: Int) throws -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TestError("socket failed: errno \(errno)") }
    var addr = loopbackAddress(port: port)
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else {
        let e = errno
        close(fd)
        throw TestError("connect to \(port) failed: errno \(e)")
    }
    return fd
}

/// True if a TCP connect to 127.0.0.1:`port` is refused.
public func connectionRefused(_ port: Int) -> Bool {
    guard let fd = try? connectLoopback(port: port) else { return true }
    close(fd)
    return false
}

/// Sets the socket's receive (and, if asked, send) timeout.
public func setTimeouts(_ fd: Int32, _ seconds: Double, send: Bool = false) {
    var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    if send { setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) }
}

/// Sends all `count` bytes at `p`.
public func sendAll(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int) throws {
    var offset = 0
    while offset < count {
        let n = Glibc.send(fd, p + offset, count - offset, Int32(MSG_NOSIGNAL))
        if n <= 0 { throw TestError("send failed after \(offset) of \(count) bytes: errno \(errno)") }
        offset += n
    }
}

public func sendAll(_ fd: Int32, _ bytes: [UInt8]) throws {
    try bytes.withUnsafeBytes { b in
        guard let base = b.baseAddress else { return }
        try sendAll(fd, base, b.count)
    }
}
