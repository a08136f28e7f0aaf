import Meters
import Synchronization
import Testing

@Suite struct MeterTableTests {
    @Test func keysKeepTheirFamilySlotAndLabels() {
        let k = MeterKey(.upstreamRequests, slot: 513, 1, 599)
        #expect(k.family == .upstreamRequests)
        #expect(k.slot == 513)
        #expect(k.a == 1)
        #expect(k.b == 599)
        #expect(MeterKey(.httpRequests, slot: 1, 2, 200) != MeterKey(.httpRequests, slot: 1, 2, 201))
        #expect(MeterKey(.httpRequests, slot: 0).bits != 0, "key 0 marks an empty cell")
    }

    @Test func addsAreExactPerKey() {
        let t = MeterTable(capacity: 64)
        for i in 0..<1000 { t.add(MeterKey(.httpRequests, slot: 1, 1, 200 + i % 3)) }
        t.add(MeterKey(.jobRetries, slot: 7), 5)
        var seen: [MeterKey: UInt64] = [:]
        t.forEach { seen[$0] = $1 }
        #expect(seen.count == 4)
        #expect(seen[MeterKey(.httpRequests, slot: 1, 1, 200)] == 334)
        #expect(seen[MeterKey(.httpRequests, slot: 1, 1, 201)] == 333)
        #expect(seen[MeterKey(.httpRequests, slot: 1, 1, 202)] == 333)
        #expect(seen[MeterKey(.jobRetries, slot: 7)] == 5)
        #expect(t.dropped == 0)
    }

    @Test func aFullTableDropsNewKeysAndSaysSo() {
        let t = MeterTable(capacity: 64)
        for i in 0..<70 { t.add(MeterKey(.httpRequests, slot: 1, 1, i)) }
        var n = 0
        t.forEach { _, _ in n += 1 }
        #expect(n == 64)
        #expect(t.dropped == 6)
        // Keys already placed still count.
        t.add(MeterKey(.httpRequests, slot: 1, 1, 0))
        var v: UInt64 = 0
        t.forEach { k, c in if k == MeterKey(.httpRequests, slot: 1, 1, 0) { v = c } }
        #expect(v == 2)
    }

    /// One writer thread, one reader thread: the reader never sees a count
    /// go down, and sees the final count once the writer is done.
    @Test func aReaderOnAnotherThreadSeesCountsOnlyGrow() async {
        let t = MeterTable(capacity: 256)
        let done = Atomic<Bool>(false)
        let key = MeterKey(.httpRequests, slot: 3, 1, 200)
        let writer = Task.detached {
            for i in 0..<200_000 { t.add(key); if i % 1000 == 0 { t.add(MeterKey(.jobRetries, slot: i / 1000)) } }
            done.store(true, ordering: .releasing)
        }
        var last: UInt64 = 0
        var monotonic = true
        while !done.load(ordering: .acquiring) {
            var v: UInt64 = 0
            t.forEach { k, c in if k == key { v = c } }
            if v < last { monotonic = false }
            last = v
        }
        await writer.value
        var final: UInt64 = 0
        t.forEach { k, c in if k == key { final = c } }
        #expect(monotonic)
        #expect(final == 200_000)
    }

    @Test func bucketsIncludeTheirUpperBound() {
        let b = MeterBuckets(seconds: [0.001, 0.01, 1])
        #expect(b.bucket(0) == 0)
        #expect(b.bucket(1_000_000) == 0, "le=0.001 holds exactly 1 ms")
        #expect(b.bucket(1_000_001) == 1)
        #expect(b.bucket(10_000_000) == 1)
        #expect(b.bucket(999_999_999) == 2)
        #expect(b.bucket(2_000_000_000) == 3, "past the last bound: +Inf")
    }

    @Test func theBookSumsTablesAndWritesTheTextFormat() {
        let book = MetricsBook(version: "9.9.9", methodNames: ["DELETE", "GET"])
        let a = MeterTable(capacity: 64), b = MeterTable(capacity: 64)
        book.register(a)
        book.register(b)
        let route = MeterLabels.slot(route: "book-test \"quoted\"")
        a.add(MeterKey(.httpRequests, slot: route, 1, 200), 3)
        b.add(MeterKey(.httpRequests, slot: route, 1, 200), 4)
        a.observe(.httpDuration, slot: route, .latency, nanos: 300_000)
        b.observe(.httpDuration, slot: route, .latency, nanos: 2_000_000_000)
        let page = String(decoding: book.render(), as: UTF8.self)
        #expect(page.contains(#"coatcheck_http_requests_total{route="book-test \"quoted\"",method="GET",code="200"} 7"#), "\(page)")
        #expect(page.contains(#"coatcheck_http_request_duration_seconds_bucket{route="book-test \"quoted\"",le="0.0005"} 1"#))
        #expect(page.contains(#"coatcheck_http_request_duration_seconds_bucket{route="book-test \"quoted\"",le="2.5"} 2"#))
        #expect(page.contains(#"coatcheck_http_request_duration_seconds_sum{route="book-test \"quoted\""} 2.0003"#))
        #expect(page.contains(#"coatcheck_http_request_duration_seconds_count{route="book-test \"quoted\""} 2"#))
        #expect(page.contains(#"coatcheck_build_info{version="9.9.9"} 1"#))
        // A second scrape folds only what was added since: still exact.
        a.add(MeterKey(.httpRequests, slot: route, 1, 200))
        let again = String(decoding: book.render(), as: UTF8.self)
        #expect(again.contains(#"coatcheck_http_requests_total{route="book-test \"quoted\"",method="GET",code="200"} 8"#))
    }
}
