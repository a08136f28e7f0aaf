public import Loop
public import Meters

/// A body kept by a store: small ones inline, larger ones in a file under
/// `jobs.dir` (spooled while it arrived, so memory stays bounded).
public enum StoredBody: Sendable, Equatable {
    case inline([UInt8])
    case file(path: String, size: Int64)

    public var size: Int64 {
        switch self {
        case .inline(let bytes): return Int64(bytes.count)
        case .file(_, let size): return size
        }
    }

    public static let empty = StoredBody.inline([])

    /// The spool file to delete with the job, if any.
    public var filePath: String? {
        if case .file(let path, _) = self { return path }
        return nil
    }
}

/// What a job sends upstream, as re-serialized at acceptance: the request
/// line and end-to-end headers (each line CRLF-terminated, without framing
/// headers and without the blank line; `Job-Id`, `Job-Attempt` and the
/// framing are added per attempt), and the de-chunked body.
public struct JobRequest: Sendable, Equatable {
    public var head: [UInt8]
    public var body: StoredBody
    /// The client's request declared a body (even an empty one): the
    /// upstream gets `Content-Length` then.
    public var declaresBody: Bool

    public init(head: [UInt8], body: StoredBody, declaresBody: Bool) {
        self.head = head
        self.body = body
        self.declaresBody = declaresBody
    }
}

/// A captured upstream response: status, reason, end-to-end header lines
/// (`Name: value\r\n` each) and the de-chunked body.
public struct JobResponse: Sendable, Equatable {
    public var status: Int
    public var reason: [UInt8]
    public var headers: [UInt8]
    public var body: StoredBody

    public init(status: Int, reason: [UInt8], headers: [UInt8], body: StoredBody) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }
}

/// A job without its bodies: what the status JSON, dispatch and recovery
/// need, small enough to keep every live job in memory.
///
/// Laid out for that: the word-sized fields first, the optional numbers
/// stored as values with a presence mask (an `Int64?` takes 16 bytes in a
/// struct) and the one-byte fields last: 208 bytes (8 of them the callback's
/// reference) where the declared types in their natural order took 248.
public struct JobRecord: Sendable, Equatable {
    public let id: JobID
    public let upstream: String
    /// The label of the route that accepted it (`name`, or `path_prefix`):
    /// durations are observed per route and method for estimates.
    public let route: String
    public let method: String
    public let path: String
    /// Unix milliseconds.
    public let createdAt: Int64
    public var attempts: Int
    /// SHA-256 of the `jobs.bind_to` credential, if bound.
    public let credential: [UInt8]?
    public let idempotencyKey: String?
    /// SHA-256 over method, path, body and credential, with a key.
    public let fingerprint: [UInt8]?
    public var contentType: String?
    public var errorMessage: String?
    /// The webhook the client asked for (`X-Callback-Url`), if any.
    public var callback: JobCallback?
    // The optional numbers: a value (0 when absent) and a bit of `present`.
    private var startedAtValue: Int64 = 0
    private var completedAtValue: Int64 = 0
    private var responseStatusValue = 0
    private var responseSizeValue: Int64 = 0
    private var present: UInt8 = 0
    public var status: JobStatus
    /// Safe to send again after a crash: an idempotent method or an
    /// Idempotency-Key (SPEC §5).
    public let resendable: Bool
    public var error: JobErrorCode?

    /// Unix milliseconds.
    public var startedAt: Int64? {
        get { present & 1 != 0 ? startedAtValue : nil }
        set { (startedAtValue, present) = Self.store(newValue, bit: 1, in: present) }
    }

    /// Unix milliseconds.
    public var completedAt: Int64? {
        get { present & 2 != 0 ? completedAtValue : nil }
        set { (completedAtValue, present) = Self.store(newValue, bit: 2, in: present) }
    }

    public var responseStatus: Int? {
        get { present & 4 != 0 ? responseStatusValue : nil }
        set {
            let (value, mask) = Self.store(newValue.map(Int64.init), bit: 4, in: present)
            (responseStatusValue, present) = (Int(value), mask)
        }
    }

    public var responseSize: Int64? {
        get { present & 8 != 0 ? responseSizeValue : nil }
        set { (responseSizeValue, present) = Self.store(newValue, bit: 8, in: present) }
    }

    /// The stored value and mask for an optional: absent is 0 and no bit,
    /// so equal records compare equal field by field.
    private static func store(_ value: Int64?, bit: UInt8, in mask: UInt8) -> (Int64, UInt8) {
        if let value { return (value, mask | bit) }
        return (0, mask & ~bit)
    }

    public init(id: JobID, status: JobStatus, upstream: String, route: String = "", method: String, path: String,
                createdAt: Int64, startedAt: Int64? = nil, completedAt: Int64? = nil, attempts: Int = 0,
                resendable: Bool, credential: [UInt8]? = nil, idempotencyKey: String? = nil,
                fingerprint: [UInt8]? = nil, callback: JobCallback? = nil) {
        self.id = id
        self.status = status
        self.upstream = upstream
        self.route = route
        self.method = method
        self.path = path
        self.createdAt = createdAt
        self.attempts = attempts
        self.resendable = resendable
        self.credential = credential
        self.idempotencyKey = idempotencyKey
        self.fingerprint = fingerprint
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.callback = callback
    }
}

extension JobRecord {
    /// Where the job's Idempotency-Key is indexed: the key within the
    /// `bind_to` credential, so two clients' keys never meet.
    public static func keyIndex(key: String, credential: [UInt8]?) -> String {
        let hex = credential.map { bytes in bytes.map { String($0, radix: 16) }.joined(separator: ".") } ?? ""
        return hex + " " + key
    }

    public var keyIndex: String? {
        idempotencyKey.map { JobRecord.keyIndex(key: $0, credential: credential) }
    }

    /// Finished more than `ttlMillis` ago (`result_ttl`): gone for clients.
    public func isExpired(now: Int64, ttlMillis: Int64) -> Bool {
        guard status.isTerminal, let done = completedAt ?? startedAt else { return false }
        return now - done >= ttlMillis
    }
}

public struct StoreError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// Where jobs are kept.
///
/// Writes are durable when `done` runs (for the SQLite store: committed
/// with `synchronous=FULL`, possibly grouped with other jobs' commits).
/// Their callbacks come back in the order the writes were submitted, on the
/// store's own context (the SQLite writer thread; inline for the memory
/// store): `JobTable` publishes them in that order and answers each asking
/// loop from there.
///
/// Reads of bodies answer on the asking loop: inline for the stores that
/// keep bodies on this machine, later for a store across the network.
///
/// The store owns the spool files its records name: `delete` removes them.
public protocol JobStore: AnyObject, Sendable {
    /// Every job, without bodies (startup recovery).
    func loadAll() throws(StoreError) -> [JobRecord]
    /// A new job and its request.
    func insert(_ record: JobRecord, request: JobRequest, done: @escaping @Sendable (StoreError?) -> Void)
    /// A job's new state; `response` is given once, when it completes.
    func update(_ record: JobRecord, response: JobResponse?, done: @escaping @Sendable (StoreError?) -> Void)
    /// A job's new state whose loss in a crash only repeats work (a webhook
    /// attempt's outcome: a lost one means the delivery is made again). The
    /// store may hold it for a few milliseconds, to go with another commit.
    func updateDeferred(_ record: JobRecord, done: @escaping @Sendable (StoreError?) -> Void)
    /// Jobs gone for good (DELETE, expiry), with their files.
    func delete(_ ids: [JobID], done: @escaping @Sendable (StoreError?) -> Void)
    /// A job's stored request (nil: no such job), answered on `loop`.
    func request(of id: JobID, on loop: EventLoop,
                 _ done: @escaping @Sendable (Result<JobRequest?, StoreError>) -> Void)
    /// A completed job's captured response (nil: none), answered on `loop`.
    func response(of id: JobID, on loop: EventLoop,
                  _ done: @escaping @Sendable (Result<JobResponse?, StoreError>) -> Void)
    /// True when the store answers (`/readyz`).
    func isHealthy() -> Bool
    /// The store's own counts for `/metrics` (its commit durations), if it keeps any.
    var meters: MeterTable? { get }
    /// Finishes pending writes and releases the store.
    func close()
}

/// A store whose bodies are on this machine: it reads them at once, so it
/// answers the asking loop inline.
public protocol LocalJobStore: JobStore {
    func request(of id: JobID) throws(StoreError) -> JobRequest?
    func response(of id: JobID) throws(StoreError) -> JobResponse?
}

extension JobStore {
    public var meters: MeterTable? { nil }

    public func updateDeferred(_ record: JobRecord, done: @escaping @Sendable (StoreError?) -> Void) {
        update(record, response: nil, done: done)
    }
}

extension LocalJobStore {
    public func request(of id: JobID, on loop: EventLoop,
                        _ done: @escaping @Sendable (Result<JobRequest?, StoreError>) -> Void) {
        loop.preconditionInEventLoop()
        done(Result { () throws(StoreError) in try request(of: id) })
    }

    public func response(of id: JobID, on loop: EventLoop,
                         _ done: @escaping @Sendable (Result<JobResponse?, StoreError>) -> Void) {
        loop.preconditionInEventLoop()
        done(Result { () throws(StoreError) in try response(of: id) })
    }
}
