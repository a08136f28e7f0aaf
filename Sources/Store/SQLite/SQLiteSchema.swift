let createSchema = """
    BEGIN IMMEDIATE;
    CREATE TABLE IF NOT EXISTS jobs (
        seq               INTEGER PRIMARY KEY,
        id                TEXT NOT NULL,
        status            TEXT NOT NULL,
        upstream          TEXT NOT NULL,
        method            TEXT NOT NULL,
        path              TEXT NOT NULL,
        created_at        INTEGER NOT NULL,
        started_at        INTEGER,
        completed_at      INTEGER,
        attempts          INTEGER NOT NULL,
        resendable        INTEGER NOT NULL,
        credential        BLOB,
        idempotency_key   TEXT,
        fingerprint       BLOB,
        response_status   INTEGER,
        content_type      TEXT,
        response_size     INTEGER,
        error_code        TEXT,
        error_message     TEXT,
        req_head          BLOB NOT NULL,
        req_body          BLOB,
        req_body_path     TEXT,
        req_body_size     INTEGER NOT NULL,
        req_declares_body INTEGER NOT NULL,
        resp_status       INTEGER,
        resp_reason       BLOB,
        resp_headers      BLOB,
        resp_body         BLOB,
        resp_body_path    TEXT,
        resp_body_size    INTEGER,
        route             TEXT NOT NULL DEFAULT '',
        callback_url      TEXT,
        callback_status   TEXT,
        callback_attempts INTEGER,
        callback_round    INTEGER,
        callback_error    TEXT,
        callback_next_at  INTEGER
    );
    PRAGMA user_version = \(SQLiteStore.schemaVersion);
    COMMIT;
    """

/// Version 3 had no callbacks.
private let addCallbackColumns = """
    ALTER TABLE jobs ADD COLUMN callback_url TEXT;
    ALTER TABLE jobs ADD COLUMN callback_status TEXT;
    ALTER TABLE jobs ADD COLUMN callback_attempts INTEGER;
    ALTER TABLE jobs ADD COLUMN callback_round INTEGER;
    ALTER TABLE jobs ADD COLUMN callback_error TEXT;
    ALTER TABLE jobs ADD COLUMN callback_next_at INTEGER;
    """

/// The script that brings a database of `version` (2 or 3) to the current one.
func migration(from version: Int) -> String {
    // Version 2 had no route column either: its jobs keep an empty label.
    let route = version < 3 ? "ALTER TABLE jobs ADD COLUMN route TEXT NOT NULL DEFAULT '';\n" : ""
    return "BEGIN IMMEDIATE;\n\(route)\(addCallbackColumns)PRAGMA user_version = \(SQLiteStore.schemaVersion);\nCOMMIT;\n"
}

let recordColumns = """
    id, status, upstream, method, path, created_at, started_at, completed_at, attempts, resendable, \
    credential, idempotency_key, fingerprint, response_status, content_type, response_size, error_code, error_message, \
    route, callback_url, callback_status, callback_attempts, callback_round, callback_error, callback_next_at
    """

/// Parameters: the record's 19 fields, the request (20-24), the callback (25-30).
let insertSQL = """
    INSERT INTO jobs (\(recordColumns), \
    req_head, req_body, req_body_path, req_body_size, req_declares_body) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
    ?25, ?26, ?27, ?28, ?29, ?30, ?20, ?21, ?22, ?23, ?24)
    """

/// The mutable part of a record; the rest never changes after insert.
let updateStateSQL = """
    UPDATE jobs SET status = ?2, started_at = ?3, completed_at = ?4, attempts = ?5, response_status = ?6, \
    content_type = ?7, response_size = ?8, error_code = ?9, error_message = ?10, callback_url = ?11, \
    callback_status = ?12, callback_attempts = ?13, callback_round = ?14, callback_error = ?15, callback_next_at = ?16 \
    WHERE seq = ?1
    """

let setResponseSQL = """
    UPDATE jobs SET resp_status = ?2, resp_reason = ?3, resp_headers = ?4, resp_body = ?5, \
    resp_body_path = ?6, resp_body_size = ?7 WHERE seq = ?1
    """

let selectFilesSQL = "SELECT req_body_path, resp_body_path FROM jobs WHERE seq = ?1"
let deleteSQL = "DELETE FROM jobs WHERE seq = ?1"
/// The record's columns, then (column 25) the rowid.
let loadAllSQL = "SELECT \(recordColumns), seq FROM jobs ORDER BY seq"
let requestSQL = "SELECT req_head, req_body, req_body_path, req_body_size, req_declares_body FROM jobs WHERE seq = ?1"
let responseSQL = """
    SELECT resp_status, resp_reason, resp_headers, resp_body, resp_body_path, resp_body_size FROM jobs WHERE seq = ?1
    """

/// A row of `loadAllSQL`, or nil when it cannot be decoded (skipped).
func decodeRecord(_ s: Statement) -> JobRecord? {
    guard let idText = s.text(0), let id = JobID(idText),
          let statusText = s.text(1), let status = JobStatus(rawValue: statusText),
          let upstream = s.text(2), let method = s.text(3), let path = s.text(4),
          let createdAt = s.int64(5), let attempts = s.int64(8), let resendable = s.int64(9)
    else { return nil }
    var error: JobErrorCode?
    if let code = s.text(16) {
        guard let known = JobErrorCode(rawValue: code) else { return nil }
        error = known
    }
    var record = JobRecord(
        id: id, status: status, upstream: upstream, route: s.text(18) ?? "", method: method, path: path,
        createdAt: createdAt, startedAt: s.int64(6), completedAt: s.int64(7), attempts: Int(attempts),
        resendable: resendable != 0, credential: s.blob(10), idempotencyKey: s.text(11), fingerprint: s.blob(12)
    )
    record.responseStatus = s.int64(13).map { Int($0) }
    record.contentType = s.text(14)
    record.responseSize = s.int64(15)
    record.error = error
    record.errorMessage = s.text(17)
    if let url = s.text(19) {
        guard let status = s.text(20).flatMap(JobCallback.Status.init(rawValue:)) else { return nil }
        record.callback = JobCallback(url: url, status: status, attempts: Int(s.int64(21) ?? 0),
                                      round: Int(s.int64(22) ?? 1), lastError: s.text(23), nextAttemptAt: s.int64(24))
    }
    return record
}

/// The callback columns of `record` at `first` ... `first + 5` (insert and update).
func bindCallback(_ callback: JobCallback?, _ s: Statement, from first: Int32) {
    s.bind(callback?.url, at: first)
    s.bind(callback?.status.rawValue, at: first + 1)
    s.bind(callback.map { Int64($0.attempts) }, at: first + 2)
    s.bind(callback.map { Int64($0.round) }, at: first + 3)
    s.bind(callback?.lastError, at: first + 4)
    s.bind(callback?.nextAttemptAt, at: first + 5)
}

func decodeBody(_ s: Statement, blob: Int32, path: Int32, size: Int32) -> StoredBody {
    if let file = s.text(path) {
        return .file(path: file, size: s.int64(size) ?? 0)
    }
    return .inline(s.blob(blob) ?? [])
}

func bindBody(_ body: StoredBody, _ s: Statement, blob: Int32, path: Int32, size: Int32) {
    switch body {
    case .inline(let bytes):
        s.bind(bytes, at: blob)
        s.bind(nil as String?, at: path)
        s.bind(Int64(bytes.count), at: size)
    case .file(let file, let length):
        s.bind(nil as [UInt8]?, at: blob)
        s.bind(file, at: path)
        s.bind(length, at: size)
    }
}
