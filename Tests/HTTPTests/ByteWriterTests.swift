import HTTP
import Loop
import Testing

@Suite struct ByteWriterTimestampTests {
    @Test(arguments: [
        (Int64(0), "1970-01-01T00:00:00.000Z"),
        (1_764_410_400_000, "2025-11-29T10:00:00.000Z"),
        (1_764_410_400_007, "2025-11-29T10:00:00.007Z"),
        (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        (951_782_400_123, "2000-02-29T00:00:00.123Z"),
    ])
    func formats(millis: Int64, text: String) {
        let w = ByteWriter(capacity: 64)
        w.appendTimestamp(millis: millis)
        #expect(String(decoding: w.bytes, as: UTF8.self) == text)
        #expect(iso8601UTC(millis: millis) == text)
    }

    /// Within one second only the milliseconds change; the next second is
    /// formatted anew.
    @Test func theCachedSecondIsReusedAndReplaced() {
        let w = ByteWriter(capacity: 64)
        for millis: Int64 in [1_764_410_400_000, 1_764_410_400_999, 1_764_410_401_000, 1_764_410_400_001] {
            w.reset()
            w.appendTimestamp(millis: millis)
            #expect(String(decoding: w.bytes, as: UTF8.self) == iso8601UTC(millis: millis))
        }
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
