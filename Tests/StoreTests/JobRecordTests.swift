import Store
import Testing

/// JobRecord keeps its optional numbers as values and a presence mask:
/// they read back as set, clear to nil, and equal records compare equal.
@Suite struct JobRecordTests {
    static func record() -> JobRecord {
        JobRecord(id: .random(), status: .queued, upstream: "u", method: "GET", path: "/", createdAt: 1, resendable: true)
    }

    @Test func optionalNumbersReadBackAsSet() {
        var r = Self.record()
        #expect(r.startedAt == nil && r.completedAt == nil && r.responseStatus == nil && r.responseSize == nil)
        r.startedAt = 10
        r.completedAt = 0
        r.responseStatus = 204
        r.responseSize = -1
        #expect(r.startedAt == 10)
        #expect(r.completedAt == 0)
        #expect(r.responseStatus == 204)
        #expect(r.responseSize == -1)
        r.completedAt = nil
        #expect(r.completedAt == nil)
        #expect(r.startedAt == 10 && r.responseStatus == 204 && r.responseSize == -1)
    }

    @Test func clearedEqualsNeverSet() {
        let plain = Self.record()
        var touched = plain
        touched.startedAt = 5
        touched.responseStatus = 200
        #expect(touched != plain)
        touched.startedAt = nil
        touched.responseStatus = nil
        #expect(touched == plain)
        let started = JobRecord(id: plain.id, status: .queued, upstream: "u", method: "GET", path: "/", createdAt: 1,
                                startedAt: 0, resendable: true)
        #expect(started != plain)
        #expect(started.startedAt == 0)
    }
}
