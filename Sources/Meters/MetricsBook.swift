public import Prometheus
import Synchronization

/// `/metrics` (SPEC §7): the meter tables of every writer, summed when
/// scraped and folded into a swift-prometheus registry, which writes the
/// text format; gauges read at scrape time from whoever knows them.
///
/// Counters are folded as the difference from the last scrape, so they
/// count exactly. Histograms are written here, beside the registry's
/// output: the registry's histogram takes a lock per observation (one lock
/// shared by every loop) and cannot take counts already bucketed, so the
/// loops bucket into their own tables and the scrape sums the buckets.
public final class MetricsBook: Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let tables = Mutex<[MeterTable]>([])
    private let gaugeReaders = Mutex<[GaugeReader]>([])
    private let scrape = Mutex(ScrapeState())
    /// Counter series shown at 0 before their first count (`declare`).
    private let declared = Mutex<Set<MeterKey>>([])
    /// http_parser's method names, by number (`MeterFamily.httpRequests`' `a`).
    private let methodNames: [String]

    public init(version: String, methodNames: [String]) {
        self.methodNames = methodNames
        registry.makeGauge(descriptor: describe("coatcheck_build_info", "1, labelled with the running version."),
                           labels: [("version", version)]).set(to: 1)
    }

    /// Adds a writer's table; it is read at every scrape from now on.
    public func register(_ table: MeterTable) {
        tables.withLock { $0.append(table) }
    }

    /// Adds a reader of gauges, called at every scrape (on the scraping
    /// thread): it sets the values it knows through the `GaugeSink`.
    public func addGauges(_ read: @escaping @Sendable (inout GaugeSink) -> Void) {
        gaugeReaders.withLock { $0.append(GaugeReader(read: read)) }
    }

    /// Counter series that exist from now on, at 0 until counted: the
    /// label sets a configuration makes known (its job routes, their
    /// upstreams and callbacks), so `rate()` and `absent()` see a series
    /// before its first event, as Prometheus's guidance asks. A series,
    /// once shown, stays, as counted ones do.
    public func declare(_ keys: some Sequence<MeterKey>) {
        declared.withLock { $0.formUnion(keys) }
    }

    /// The text format 0.0.4 page.
    public func render() -> [UInt8] {
        let tables = self.tables.withLock { $0 }
        let readers = gaugeReaders.withLock { $0 }
        var totals: [MeterKey: UInt64] = [:]
        for key in declared.withLock({ $0 }) { totals[key] = 0 }
        for t in tables { t.forEach { k, v in totals[k, default: 0] &+= v } }
        var sink = GaugeSink()
        for r in readers { r.read(&sink) }
        return scrape.withLock { s in
            fold(totals, into: &s)
            setGauges(sink, into: &s)
            var out: [UInt8] = []
            out.reserveCapacity(16 * 1024)
            registry.emit(into: &out)
            writeHistograms(totals, into: &out)
            return out
        }
    }

    // MARK: Counters

    private func fold(_ totals: [MeterKey: UInt64], into s: inout ScrapeState) {
        for (key, total) in totals {
            guard let family = key.family, let spec = CounterSpec(family) else { continue }
            let last = s.folded[key] ?? 0
            guard total > last || s.counters[key] == nil else { continue }
            let counter: Counter
            if let c = s.counters[key] {
                counter = c
            } else {
                counter = registry.makeCounter(descriptor: describe(spec.name, spec.help), labels: counterLabels(family, key))
                s.counters[key] = counter
            }
            if total > last { counter.increment(by: Int64(total - last)) }
            s.folded[key] = total
        }
    }

    private func counterLabels(_ family: MeterFamily, _ key: MeterKey) -> [(String, String)] {
        switch family {
        case .httpRequests:
            let method = key.a < methodNames.count ? methodNames[key.a] : "other"
            return [("route", route(key.slot)), ("method", method), ("code", String(key.b))]
        case .upstreamRequests:
            if key.a == 0 { return [("upstream", upstream(key.slot)), ("code", String(key.b))] }
            return [("upstream", upstream(key.slot)), ("error", UpstreamFault(rawValue: key.b)?.label ?? "other")]
        case .jobsCreated:
            return [("route", route(key.slot)), ("mode", MeterLabels.mode(key.a))]
        case .jobsFinished:
            return [("upstream", upstream(key.slot)), ("status", MeterLabels.jobStatus(key.a))]
        case .jobRetries:
            return [("upstream", upstream(key.slot))]
        case .webhookDeliveries:
            return [("route", route(key.slot)), ("result", DeliveryResult(rawValue: key.a)?.label ?? "other")]
        case .httpDuration, .upstreamDuration, .jobDuration, .storeCommit:
            return []
        }
    }

    private func route(_ slot: Int) -> String { MeterLabels.route(slot) ?? "" }
    private func upstream(_ slot: Int) -> String { MeterLabels.upstream(slot) ?? "" }

    // MARK: Gauges

    private func setGauges(_ sink: GaugeSink, into s: inout ScrapeState) {
        var seen = Set<GaugeSink.Series>()
        for (series, value) in sink.values {
            seen.insert(series)
            let gauge: Gauge
            if let g = s.gauges[series] {
                gauge = g
            } else {
                gauge = registry.makeGauge(descriptor: describe(series.name, series.help), labels: series.labelTuples)
                s.gauges[series] = gauge
            }
            gauge.set(to: value)
        }
        // A series nobody reported any more (an upstream a reload removed) goes.
        for (series, gauge) in s.gauges where !seen.contains(series) {
            registry.unregisterGauge(gauge)
            s.gauges[series] = nil
        }
    }

    // MARK: Histograms

    private func writeHistograms(_ totals: [MeterKey: UInt64], into out: inout [UInt8]) {
        for spec in HistogramSpec.all {
            // slot -> bucket counts (the last one +Inf) and the sum.
            var series: [Int: (counts: [UInt64], sum: UInt64)] = [:]
            for (key, v) in totals where key.family == spec.family {
                var entry = series[key.slot] ?? (Array(repeating: 0, count: spec.buckets.bounds.count + 1), 0)
                if key.a == MeterBuckets.sumIndex {
                    entry.sum &+= v
                } else if key.a < entry.counts.count {
                    entry.counts[key.a] &+= v
                }
                series[key.slot] = entry
            }
            guard !series.isEmpty else { continue }
            out.append(string: "# HELP \(spec.name) \(spec.help)\n# TYPE \(spec.name) histogram\n")
            for slot in series.keys.sorted() {
                let (counts, sum) = series[slot]!
                let label = "\(spec.label)=\"\(escaped(spec.labelValue(slot)))\""
                var cumulative: UInt64 = 0
                for (i, n) in counts.enumerated() {
                    cumulative &+= n
                    let le = i < spec.buckets.bounds.count ? seconds(spec.buckets.bounds[i]) : "+Inf"
                    out.append(string: "\(spec.name)_bucket{\(label),le=\"\(le)\"} \(cumulative)\n")
                }
                out.append(string: "\(spec.name)_sum{\(label)} \(seconds(sum))\n")
                out.append(string: "\(spec.name)_count{\(label)} \(cumulative)\n")
            }
        }
    }

    /// Nanoseconds as seconds, as short as exact allows.
    private func seconds(_ nanos: UInt64) -> String {
        let whole = nanos / 1_000_000_000
        var frac = nanos % 1_000_000_000
        guard frac != 0 else { return String(whole) }
        var digits = 9
        while frac % 10 == 0 { frac /= 10; digits -= 1 }
        let f = String(frac)
        return "\(whole)." + String(repeating: "0", count: digits - f.count) + f
    }
}

/// Gauge values a reader reports at scrape time.
public struct GaugeSink: Sendable {
    struct Series: Hashable, Sendable {
        let name: String
        let labels: [Label]
        let help: String
    }
    struct Label: Hashable, Sendable {
        let name: String
        let value: String
        var tuple: (String, String) { (name, value) }
    }
    fileprivate(set) var values: [(Series, Double)] = []

    public mutating func set(_ name: GaugeName, _ labels: [(String, String)] = [], _ value: Double) {
        values.append((Series(name: name.rawValue, labels: labels.map { Label(name: $0.0, value: $0.1) },
                              help: name.help), value))
    }
}

extension GaugeSink.Series {
    var labelTuples: [(String, String)] { labels.map(\.tuple) }
}

/// The gauges of SPEC §7's table.
public enum GaugeName: String, Sendable {
    case upstreamInFlight = "coatcheck_upstream_in_flight"
    case upstreamQueueDepth = "coatcheck_upstream_queue_depth"
    case upstreamQueueOldest = "coatcheck_upstream_queue_oldest_seconds"
    case jobs = "coatcheck_jobs"
    case webhookPending = "coatcheck_webhook_pending"
    case connections = "coatcheck_connections"

    var help: String {
        switch self {
        case .upstreamInFlight: return "Exchanges holding one of the upstream's max_concurrency slots."
        case .upstreamQueueDepth: return "Requests and jobs waiting for one of the upstream's slots."
        case .upstreamQueueOldest: return "How long the oldest of them has waited."
        case .jobs: return "Jobs in the store, by state."
        case .webhookPending: return "Webhook deliveries not yet delivered or given up."
        case .connections: return "Open client connections, by listener."
        }
    }
}

private struct GaugeReader: Sendable {
    let read: @Sendable (inout GaugeSink) -> Void
}

private struct ScrapeState: Sendable {
    var folded: [MeterKey: UInt64] = [:]
    var counters: [MeterKey: Counter] = [:]
    var gauges: [GaugeSink.Series: Gauge] = [:]
}

private struct CounterSpec {
    let name: String
    let help: String

    init?(_ family: MeterFamily) {
        switch family {
        case .httpRequests:
            (name, help) = ("coatcheck_http_requests_total", "Requests answered, by route, method and status.")
        case .upstreamRequests:
            (name, help) = ("coatcheck_upstream_requests_total",
                            "Upstream exchanges, by upstream and status, or error for those without a whole response.")
        case .jobsCreated:
            (name, help) = ("coatcheck_jobs_created_total", "Jobs created, by route and its mode.")
        case .jobsFinished:
            (name, help) = ("coatcheck_jobs_finished_total", "Jobs that reached a terminal state, by upstream and state.")
        case .jobRetries:
            (name, help) = ("coatcheck_job_retries_total", "Job attempts retried after a failure, by upstream.")
        case .webhookDeliveries:
            (name, help) = ("coatcheck_webhook_deliveries_total",
                            "Webhook delivery attempts: delivered, failed_attempt (to be retried), failed (given up).")
        case .httpDuration, .upstreamDuration, .jobDuration, .storeCommit:
            return nil
        }
    }
}

/// A whole metric name as swift-prometheus takes it (its parts joined by `_`).
private func describe(_ name: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
}

private struct HistogramSpec: Sendable {
    let family: MeterFamily
    let name: String
    let help: String
    let label: String
    let buckets: MeterBuckets
    let labelValue: @Sendable (Int) -> String

    static let all: [HistogramSpec] = [
        HistogramSpec(family: .httpDuration, name: "coatcheck_http_request_duration_seconds",
                      help: "From a request's first byte to its answer's last, by route.", label: "route",
                      buckets: .latency, labelValue: { MeterLabels.route($0) ?? "" }),
        HistogramSpec(family: .upstreamDuration, name: "coatcheck_upstream_request_duration_seconds",
                      help: "One upstream exchange, from its slot to the response's last byte, by upstream.",
                      label: "upstream", buckets: .latency, labelValue: { MeterLabels.upstream($0) ?? "" }),
        HistogramSpec(family: .jobDuration, name: "coatcheck_job_duration_seconds",
                      help: "A job from its creation to its terminal state, by upstream.", label: "upstream",
                      buckets: .jobDuration, labelValue: { MeterLabels.upstream($0) ?? "" }),
        HistogramSpec(family: .storeCommit, name: "coatcheck_store_commit_duration_seconds",
                      help: "One durable commit of the store (a group of writes).", label: "store",
                      buckets: .storeCommit, labelValue: { StoreKind(rawValue: $0)?.label ?? "" }),
    ]
}

private func escaped(_ value: String) -> String {
    var out = ""
    for ch in value.unicodeScalars {
        switch ch {
        case "\\": out += "\\\\"
        case "\"": out += "\\\""
        case "\n": out += "\\n"
        default: out.unicodeScalars.append(ch)
        }
    }
    return out
}

extension [UInt8] {
    fileprivate mutating func append(string: String) { append(contentsOf: string.utf8) }
}
