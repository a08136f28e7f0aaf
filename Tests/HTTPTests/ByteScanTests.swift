@testable import HTTP
import Testing

/// The word-at-a-time head checks against their byte-at-a-time definitions,
/// for every byte value at every offset around the word boundaries, and for
/// every pair of interesting bytes next to each other.
@Suite struct ByteScanTests {
    static let interesting: [UInt8] = [0x00, 0x01, 0x09, 0x0A, 0x0D, 0x0E, 0x1F, 0x20, 0x41, 0x7E, 0x7F, 0x80, 0xFF]

    func referenceRawFault(_ b: [UInt8]) -> RawFault {
        for i in b.indices {
            let c = b[i]
            if c == 0 { return .badByte }
            if c == 0x0D && (i + 1 >= b.count || b[i + 1] != 0x0A) { return .badByte }
            if c == 0x0A && i + 1 < b.count && (b[i + 1] == 0x20 || b[i + 1] == 0x09) { return .obsFold }
        }
        return b.contains { ($0 < 0x20 && $0 != 0x09 && $0 != 0x0A && $0 != 0x0D) || $0 == 0x7F } ? .controls : .none
    }

    func referenceHasControl(_ b: [UInt8]) -> Bool {
        b.contains { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }
    }

    func check(_ b: [UInt8]) {
        b.withUnsafeBufferPointer { p in
            #expect(rawFault(p.baseAddress!, p.count) == referenceRawFault(b), "rawFault of \(b)")
            #expect(hasControl(p.baseAddress!, p.count) == referenceHasControl(b), "hasControl of \(b)")
        }
    }

    @Test func everyByteAtEveryOffset() {
        for length in [1, 7, 8, 9, 16, 21] {
            for at in 0..<length {
                for value in 0...255 {
                    var b = [UInt8](repeating: 0x61, count: length)
                    b[at] = UInt8(value)
                    check(b)
                }
            }
        }
    }

    @Test func everyInterestingPairAtEveryOffset() {
        for length in [2, 8, 9, 17] {
            for at in 0..<(length - 1) {
                for x in Self.interesting {
                    for y in Self.interesting {
                        var b = [UInt8](repeating: 0x61, count: length)
                        b[at] = x
                        b[at + 1] = y
                        check(b)
                        // After a well-formed line end, too.
                        if at >= 2 {
                            b[at - 2] = 0x0D
                            b[at - 1] = 0x0A
                            check(b)
                        }
                    }
                }
            }
        }
    }

    @Test func realHeads() {
        let heads = [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 29 Nov 2026 11:36:44 GMT\r\nContent-Length: 2\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n",
            "GET / HTTP/1.1\nHost: a\n\n",
        ]
        for h in heads { check(Array(h.utf8)) }
    }
}
