@testable import Store
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What goes to hiredis: the RESP bytes, and a NUL after them, since
/// `redisAsyncFormattedCommand` scans a SUBSCRIBE's arguments with `strchr`
/// past the last one.
@Suite struct RedisCommandTests {
    @Test func aCommandIsRESPWithATerminatorOutsideItsLength() {
        var subscribe = RedisCommand("SUBSCRIBE")
        subscribe.append("coatcheck:{jobs}:events")
        let (bytes, terminated) = subscribe.withEncoded { chars, length in
            (String(cString: chars), chars[length] == 0)
        }
        #expect(bytes == "*2\r\n$9\r\nSUBSCRIBE\r\n$23\r\ncoatcheck:{jobs}:events\r\n")
        #expect(terminated)
    }

    @Test func binaryArgumentsKeepTheirBytesAndLength() {
        var set = RedisCommand("SET")
        set.append("k")
        set.append([0, 0x24, 0x0D, 0x0A, 0xFF])
        let (length, tail) = set.withEncoded { chars, length in
            (length, (length - 7..<length + 1).map { UInt8(bitPattern: chars[$0]) })
        }
        #expect(length == "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\n".utf8.count + 5 + 2)
        #expect(tail == [0, 0x24, 0x0D, 0x0A, 0xFF, 0x0D, 0x0A, 0])
    }
}
