import Synchronization

/// Label values behind a `MeterKey`'s slot: route and upstream names,
/// interned when a configuration is compiled (never per request). A name
/// keeps its slot for the life of the process, across reloads, so counts
/// made under an old configuration stay under the same label.
public enum MeterLabels {
    /// The route of a request that matched none (answered 404 by the proxy).
    public static let unrouted = 0
    public static let unroutedName = "(none)"

    private static let routes = Mutex(Interner(first: unroutedName))
    private static let upstreams = Mutex(Interner(first: nil))

    public static func slot(route name: String) -> Int { routes.withLock { $0.slot(name) } }
    public static func slot(upstream name: String) -> Int { upstreams.withLock { $0.slot(name) } }
    public static func route(_ slot: Int) -> String? { routes.withLock { $0.name(slot) } }
    public static func upstream(_ slot: Int) -> String? { upstreams.withLock { $0.name(slot) } }

    /// Slot 0 of the upstreams: exchanges that are not counted per
    /// upstream (webhook receivers: their URLs are not bounded labels).
    public static let uncounted = 0

    /// `jobs_created_total`'s `mode`: `RouteMode` in its declaration order.
    public static let modes = ["sync", "async", "auto"]
    /// `jobs_finished_total`'s `status` and `jobs`' `state`: `JobStatus` in
    /// its declaration order.
    public static let jobStatuses = ["queued", "running", "completed", "failed", "canceled"]

    static func mode(_ i: Int) -> String { i < modes.count ? modes[i] : "other" }
    static func jobStatus(_ i: Int) -> String { i < jobStatuses.count ? jobStatuses[i] : "other" }
}

private struct Interner {
    private var slots: [String: Int] = [:]
    private var names: [String] = []

    init(first: String?) {
        names.append(first ?? "")
        if let first { slots[first] = 0 }
    }

    mutating func slot(_ name: String) -> Int {
        if let s = slots[name] { return s }
        // 16 bits of a key; past that (65k distinct names over the life of
        // one process) counts share the last slot rather than overflow.
        guard names.count < 0xFFFF else { return 0xFFFF - 1 }
        names.append(name)
        slots[name] = names.count - 1
        return names.count - 1
    }

    func name(_ slot: Int) -> String? { slot < names.count ? names[slot] : nil }
}

/// `upstream_requests_total`'s `error` label: why an exchange got no whole response.
public enum UpstreamFault: Int, Sendable, CaseIterable {
    case unreachable, connectTimeout, tls, reset, badResponse, truncated, timeout, aborted

    public var label: String {
        switch self {
        case .unreachable: return "unreachable"
        case .connectTimeout: return "connect_timeout"
        case .tls: return "tls"
        case .reset: return "reset"
        case .badResponse: return "bad_response"
        case .truncated: return "truncated"
        case .timeout: return "timeout"
        case .aborted: return "aborted"
        }
    }
}

/// `webhook_deliveries_total`'s `result` label.
public enum DeliveryResult: Int, Sendable, CaseIterable {
    case delivered, failedAttempt, failed

    public var label: String {
        switch self {
        case .delivered: return "delivered"
        case .failedAttempt: return "failed_attempt"
        case .failed: return "failed"
        }
    }
}

/// `store_commit_duration_seconds`'s `store` label (the slot of its keys).
public enum StoreKind: Int, Sendable, CaseIterable {
    case memory, sqlite, redis

    public var label: String {
        switch self {
        case .memory: return "memory"
        case .sqlite: return "sqlite"
        case .redis: return "redis"
        }
    }
}
