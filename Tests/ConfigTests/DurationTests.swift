import Config
import Testing

@Suite struct DurationTests {
    static let durations: [(String, Duration)] = [
        ("250ms", .milliseconds(250)),
        ("0s", .zero),
        ("0ms", .zero),
        ("2s", .seconds(2)),
        ("15m", .seconds(15 * 60)),
        ("24h", .seconds(24 * 3600)),
        ("1h30m", .seconds(5400)),
        ("1m500ms", .milliseconds(60_500)),
        ("007s", .seconds(7)),
    ]

    @Test(arguments: durations)
    func parsesDurations(text: String, expected: Duration) {
        #expect(parseDuration(text) == expected)
    }

    @Test(arguments: [
        "", "s", "10", "-1s", "+1s", "1.5s", "1 s", " 1s", "1s ", "1d", "1S", "1sec", "ms", "30m1h", "1s1s",
        "99999999999999999999s", "9223372036854775807h",
    ])
    func rejectsBadDurations(text: String) {
        #expect(parseDuration(text) == nil)
    }

    static let sizes: [(String, Int64)] = [
        ("512", 512),
        ("0", 0),
        ("16KiB", 16 * 1024),
        ("8MiB", 8 * 1024 * 1024),
        ("1GiB", 1 << 30),
        ("2TiB", 2 << 40),
        ("10KB", 10_000),
        ("3MB", 3_000_000),
        ("1GB", 1_000_000_000),
    ]

    @Test(arguments: sizes)
    func parsesSizes(text: String, expected: Int64) {
        #expect(parseSize(text) == expected)
    }

    @Test(arguments: [
        "", "KiB", "-1", "1.5MiB", "16 KiB", "16kib", "16K", "16KiBx", "9223372036854775808", "9000000000TiB",
    ])
    func rejectsBadSizes(text: String) {
        #expect(parseSize(text) == nil)
    }

    static let formatted: [(Duration, String)] = [
        (.zero, "0s"), (.milliseconds(250), "250ms"), (.seconds(2), "2s"), (.seconds(5400), "1h30m"),
        (.seconds(86400), "24h"), (.milliseconds(61_001), "1m1s1ms"),
    ]

    @Test(arguments: formatted)
    func formatsDurationsThatParseBack(d: Duration, text: String) {
        #expect(formatDuration(d) == text)
        #expect(parseDuration(text) == d)
    }

    @Test func formatsSizes() {
        #expect(formatSize(16 * 1024) == "16KiB")
        #expect(formatSize(8 * 1024 * 1024) == "8MiB")
        #expect(formatSize(1000) == "1000")
        #expect(formatSize(0) == "0")
    }
}
