import HTTP
import Loop
import Testing

@Suite struct ByteWriterTimestampTests {
    @Test(arguments: [Int64(0), 1_764_410_400_000, 1_764_410_400_007, 4_102_444_799_999, 951_782_400_123])
    func bytesMatchTheLogFormat(millis: Int64) {
        let w = ByteWriter(capacity: 64)
        w.appendTimestamp(millis: millis)
        #expect(String(decoding: w.bytes, as: UTF8.self) == iso8601UTC(millis: millis))
    }

    @Test func knownInstant() {
        let w = ByteWriter(capacity: 64)
        w.appendTimestamp(millis: 1_796_551_200_500)
        #expect(String(decoding: w.bytes, as: UTF8.self) == "2026-12-06T10:00:00.500Z")
    }
}

@Suite struct ByteWriterJSONTests {
    @Test(arguments: [
        ("plain /path?x=1", "plain /path?x=1"),
        ("", ""),
        ("a\"b\\c", "a\\\"b\\\\c"),
        ("\u{1}x\ny\t", "\\u0001x\\u000ay\\u0009"),
        ("\"", "\\\""),
        ("tail\\", "tail\\\\"),
    ])
    func escapes(input: String, expected: String) {
        let w = ByteWriter(capacity: 8)
        w.appendJSONEscaped(input)
        #expect(String(decoding: w.bytes, as: UTF8.self) == expected)
    }
}
