import Crypto

/// The Redis store's keys, under `redis.prefix` (README "Redis: key layout").
public struct RedisKeys: Sendable, Equatable {
    public let prefix: String

    public init(prefix: String) { self.prefix = prefix }

    /// Hash: the job's record (`RedisRecord`), `owner` while claimed, and
    /// `idempotency_ref` (the key's name) for a keyed job.
    public func job(_ id: JobID) -> String { "\(prefix):job:\(id.text)" }
    /// String: the request to send (`RedisRecord.encode(_:body:)`).
    public func request(_ id: JobID) -> String { "\(prefix):req:\(id.text)" }
    /// String: the captured response.
    public func response(_ id: JobID) -> String { "\(prefix):res:\(id.text)" }
    /// String: an Idempotency-Key's job id.
    public func idempotency(_ index: String) -> String { "\(prefix):key:\(index)" }
    /// List: an upstream's queued job ids, oldest first.
    public func queue(_ upstream: String) -> String { "\(prefix):queue:\(upstream)" }
    /// Sorted set: an upstream's claimed jobs, by lease deadline (Unix ms).
    /// Its size is the upstream's slots in use across the replicas.
    public func running(_ upstream: String) -> String { "\(prefix):running:\(upstream)" }
    /// Sorted set: an upstream's jobs waiting out a retry backoff, by due time.
    public func delayed(_ upstream: String) -> String { "\(prefix):delayed:\(upstream)" }
    /// Sorted set: jobs whose webhook is due, by due time.
    public var callbacks: String { "\(prefix):callbacks" }
    /// Pub/sub channel: `queued UPSTREAM`, `end ID`, `cancel ID`.
    public var events: String { "\(prefix):events" }
}

/// A Lua script run with `EVALSHA` (sent whole once per connection when
/// Redis answers NOSCRIPT). Every script gets the prefix, the time and
/// `result_ttl` as its first three arguments, and the prelude's helpers.
public struct RedisScript: Sendable {
    public let name: String
    public let source: String
    public let sha1: String

    init(_ name: String, _ body: String) {
        self.name = name
        source = RedisScript.prelude + body
        sha1 = Insecure.SHA1.hash(data: Array(source.utf8)).map { b in
            let d = Array("0123456789abcdef".utf8)
            return String(decoding: [d[Int(b >> 4)], d[Int(b & 0xF)]], as: UTF8.self)
        }.joined()
    }

    /// `EVALSHA` (or, with `whole`, `EVAL`) with `keys` and the common
    /// arguments before `arguments`.
    public func command(keys: [String], prefix: String, now: Int64, ttlMillis: Int64,
                        _ arguments: [RedisArgument], whole: Bool = false) -> RedisCommand {
        var c = whole ? RedisCommand("EVAL") : RedisCommand("EVALSHA")
        c.append(whole ? source : sha1)
        c.append(keys.count)
        for k in keys { c.append(k) }
        c.append(prefix)
        c.append(now)
        c.append(ttlMillis)
        for a in arguments {
            switch a {
            case .text(let s): c.append(s)
            case .bytes(let b): c.append(b)
            case .number(let n): c.append(n)
            }
        }
        return c
    }

    /// Helpers every script starts with. `ended` makes a job terminal:
    /// `completed_at`, its fields, its callback due (a canceled job's
    /// callback fails: there is nothing to deliver), every key of it set
    /// to expire after `result_ttl`, and the replicas told.
    static let prelude = """
        local P, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
        local function jobkey(id) return P .. ':job:' .. id end
        local function ended(id, status, fields)
          local job = jobkey(id)
          redis.call('HSET', job, 'status', status, 'completed_at', now)
          if fields and #fields > 0 then redis.call('HSET', job, unpack(fields)) end
          if redis.call('HGET', job, 'callback_status') == 'waiting' then
            if status == 'canceled' then
              redis.call('HSET', job, 'callback_status', 'failed')
            else
              redis.call('HSET', job, 'callback_status', 'pending', 'callback_next_at', now)
              redis.call('ZADD', P .. ':callbacks', now, id)
            end
          end
          redis.call('PEXPIRE', job, ttl)
          redis.call('PEXPIRE', P .. ':req:' .. id, ttl)
          redis.call('PEXPIRE', P .. ':res:' .. id, ttl)
          local key = redis.call('HGET', job, 'idempotency_ref')
          if key then redis.call('PEXPIRE', key, ttl) end
          redis.call('PUBLISH', P .. ':events', 'end ' .. id)
        end
        -- A new job's record and request, its Idempotency-Key (KEYS[4], ''
        -- for none) taken for it; or, when the key is taken, nothing
        -- written and the key's job id returned. KEYS[1]: job, KEYS[2]: request.
        local function writeNew(id, fields, request)
          if KEYS[4] ~= '' then
            local existing = redis.call('GET', KEYS[4])
            if existing then return existing end
            redis.call('SET', KEYS[4], id)
          end
          redis.call('HSET', KEYS[1], unpack(fields))
          if KEYS[4] ~= '' then redis.call('HSET', KEYS[1], 'idempotency_ref', KEYS[4]) end
          redis.call('SET', KEYS[2], request)
          return false
        end
        local function slice(t, from)
          local out = {}
          for i = from, #t do out[#out + 1] = t[i] end
          return out
        end

        """

    /// A new job: its record and request written and its id queued in one
    /// step, or, when its Idempotency-Key is taken, nothing written and the
    /// key's job id returned (nil: created). `held` (1): written but not
    /// queued, and set to expire in a minute, until `release` (after `WAIT`
    /// said enough Redis replicas have it), so no replica runs a job whose
    /// client may still hear 503. KEYS: job, request, queue, idempotency key
    /// (or "" for none). ARGV: id, upstream, request bytes, held, record fields...
    public static let create = RedisScript("create", """
        local id = ARGV[4]
        local existing = writeNew(id, slice(ARGV, 8), ARGV[6])
        if existing then return existing end
        if ARGV[7] == '1' then
          for _, k in ipairs(KEYS) do if k ~= '' and k ~= KEYS[3] then redis.call('PEXPIRE', k, 60000) end end
          return false
        end
        redis.call('RPUSH', KEYS[3], id)
        redis.call('PUBLISH', P .. ':events', 'queued ' .. ARGV[5])
        return false
        """)

    /// A held job (`create`), acknowledged: kept, queued, and the replicas
    /// told. Returns 0 when it is gone (expired meanwhile).
    /// KEYS: job, request, queue, idempotency key (or ""). ARGV: id, upstream.
    public static let release = RedisScript("release", """
        if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
        for _, k in ipairs(KEYS) do if k ~= '' and k ~= KEYS[3] then redis.call('PERSIST', k) end end
        redis.call('RPUSH', KEYS[3], ARGV[4])
        redis.call('PUBLISH', P .. ':events', 'queued ' .. ARGV[5])
        return 1
        """)

    /// A new job whose first attempt is already running here (an `auto`
    /// request past `async_after`): written `running`, claimed by
    /// `replica` until `now + lease`, in one step; the Idempotency-Key as
    /// in `create`. KEYS: job, request, running, idempotency key (or "").
    /// ARGV: id, lease ms, replica, request bytes, record fields...
    public static let createClaimed = RedisScript("createClaimed", """
        local id, lease, replica = ARGV[4], tonumber(ARGV[5]), ARGV[6]
        local existing = writeNew(id, slice(ARGV, 8), ARGV[7])
        if existing then return existing end
        redis.call('HSET', KEYS[1], 'owner', replica)
        redis.call('ZADD', KEYS[3], now + lease, id)
        return false
        """)

    /// Takes up to `max` jobs of an upstream while it has free slots: first
    /// the claims whose lease lapsed are settled by the restart rule (SPEC
    /// §5: resendable jobs go back to the front of the queue, others fail
    /// `interrupted`, canceled ones just lose the claim), then due retries
    /// rejoin the queue's front, then, while under `limit` claims, the
    /// oldest queued jobs are claimed for `replica` until `now + lease`
    /// (several in one step: one write for Redis to make durable, not one
    /// each). KEYS: running, queue, delayed. ARGV: lease ms, limit,
    /// replica, max. Returns {{ids failed as interrupted}, {{id, attempt,
    /// the request's bytes, the record's fields (as HGETALL)}, ...}}.
    public static let claim = RedisScript("claim", """
        local lease, limit, replica, max = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
        local failed, claims = {}, {}
        for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
          redis.call('ZREM', KEYS[1], id)
          local job = jobkey(id)
          local s = redis.call('HMGET', job, 'status', 'resendable')
          redis.call('HDEL', job, 'owner')
          if s[1] == 'running' then
            if s[2] == '1' then
              redis.call('HSET', job, 'status', 'queued')
              redis.call('LPUSH', KEYS[2], id)
            else
              ended(id, 'failed', {'error', 'interrupted', 'error_message', 'the replica running it stopped renewing its claim'})
              failed[#failed + 1] = id
            end
          end
        end
        local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
        for i = #due, 1, -1 do
          redis.call('ZREM', KEYS[3], due[i])
          redis.call('LPUSH', KEYS[2], due[i])
        end
        while #claims < max and redis.call('ZCARD', KEYS[1]) < limit do
          local id = redis.call('LPOP', KEYS[2])
          if not id then break end
          local job = jobkey(id)
          if redis.call('HGET', job, 'status') == 'queued' then
            local attempt = redis.call('HINCRBY', job, 'attempts', 1)
            redis.call('HSET', job, 'status', 'running', 'owner', replica)
            redis.call('HSETNX', job, 'started_at', now)
            redis.call('ZADD', KEYS[1], now + lease, id)
            claims[#claims + 1] = {id, attempt, redis.call('GET', P .. ':req:' .. id) or '', redis.call('HGETALL', job)}
          end
        end
        return {failed, claims}
        """)

    /// Extends `replica`'s claims to `now + lease`. Returns {lost ids...,
    /// '', cancel-requested ids...}: claims that are no longer this
    /// replica's (their exchange must stop: another replica may own the job
    /// now), and jobs canceled meanwhile (their exchange is aborted).
    /// KEYS: running. ARGV: lease ms, replica, ids...
    public static let renew = RedisScript("renew", """
        local lease, replica = tonumber(ARGV[4]), ARGV[5]
        local lost, canceled = {}, {}
        for i = 6, #ARGV do
          local id = ARGV[i]
          local s = redis.call('HMGET', jobkey(id), 'owner', 'status')
          if s[1] ~= replica or not redis.call('ZSCORE', KEYS[1], id) then
            lost[#lost + 1] = id
          else
            redis.call('ZADD', KEYS[1], 'XX', now + lease, id)
            if s[2] ~= 'running' then canceled[#canceled + 1] = id end
          end
        end
        lost[#lost + 1] = ''
        for _, id in ipairs(canceled) do lost[#lost + 1] = id end
        return lost
        """)

    /// An attempt's end, written only while `replica` still holds the claim
    /// for `attempt`: `completed` (with the response), `failed`, or `retry`
    /// (queued again, due at `retry_at`). The claim (the slot) is given
    /// back. A job canceled meanwhile stays canceled. Returns 1 when
    /// written, 2 when the job had been canceled, 0 when the claim was lost.
    /// KEYS: job, running, response, delayed.
    /// ARGV: id, replica, attempt, outcome, retry_at, response bytes, fields...
    public static let finish = RedisScript("finish", """
        local id, replica, attempt, outcome = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
        local s = redis.call('HMGET', KEYS[1], 'status', 'owner', 'attempts')
        if s[2] ~= replica or s[3] ~= attempt or not redis.call('ZSCORE', KEYS[2], id) then return 0 end
        redis.call('ZREM', KEYS[2], id)
        redis.call('HDEL', KEYS[1], 'owner')
        if s[1] ~= 'running' then return 2 end
        local fields = slice(ARGV, 10)
        if outcome == 'retry' then
          redis.call('HSET', KEYS[1], 'status', 'queued')
          if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
          redis.call('ZADD', KEYS[4], tonumber(ARGV[8]), id)
          return 1
        end
        if ARGV[9] ~= '' then redis.call('SET', KEYS[3], ARGV[9]) end
        ended(id, outcome, fields)
        return 1
        """)

    /// DELETE of a job that has not ended (SPEC §4): a queued one is taken
    /// out of its queue and canceled; a running one is canceled at once and
    /// its replica told to abort the exchange (its claim, and so its slot,
    /// stays until it has). Returns the status it had, or nil when unknown.
    /// KEYS: job, queue, delayed. ARGV: id.
    public static let cancel = RedisScript("cancel", """
        local id = ARGV[4]
        local status = redis.call('HGET', KEYS[1], 'status')
        if not status then return false end
        if status == 'queued' then
          redis.call('LREM', KEYS[2], 1, id)
          redis.call('ZREM', KEYS[3], id)
          ended(id, 'canceled')
        elseif status == 'running' then
          ended(id, 'canceled')
          redis.call('PUBLISH', P .. ':events', 'cancel ' .. id)
        end
        return status
        """)

    /// DELETE of an ended job (SPEC §4): every key of it goes. Returns 1
    /// when it existed. KEYS: job, request, response.
    public static let remove = RedisScript("remove", """
        local key = redis.call('HGET', KEYS[1], 'idempotency_ref')
        if key then redis.call('DEL', key) end
        return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3]) > 0 and 1 or 0
        """)

    /// Takes up to `max` due webhook deliveries for `replica`: each one's
    /// due time moves to `now + lease` (the claim: if this replica dies, the
    /// delivery is due again then, for whichever replica looks first).
    /// Entries whose job is gone or whose callback is no longer pending are
    /// dropped. KEYS: callbacks. ARGV: lease ms, replica, max.
    /// Returns {id, fields (as HGETALL), id, fields, ...}.
    public static let claimDeliveries = RedisScript("claimDeliveries", """
        local lease, replica, max = tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
        local out = {}
        for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, max)) do
          local job = jobkey(id)
          if redis.call('HGET', job, 'callback_status') ~= 'pending' then
            redis.call('ZREM', KEYS[1], id)
          else
            redis.call('ZADD', KEYS[1], now + lease, id)
            redis.call('HSET', job, 'callback_owner', replica)
            out[#out + 1] = id
            out[#out + 1] = redis.call('HGETALL', job)
          end
        end
        return out
        """)

    /// A delivery attempt's outcome, written while `replica` holds the
    /// delivery of `round`: `delivered` or `failed` end it, `retry` makes
    /// it due again at `next_at`. Returns 1 when written, 0 when the claim
    /// was lost (another replica has it, or the round was re-armed).
    /// KEYS: job, callbacks.
    /// ARGV: id, replica, round, outcome, attempts, next_at, last_error ('' for none).
    public static let finishDelivery = RedisScript("finishDelivery", """
        local id, replica, round, outcome = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
        local s = redis.call('HMGET', KEYS[1], 'callback_owner', 'callback_round', 'callback_status')
        if s[1] ~= replica or s[2] ~= round or s[3] ~= 'pending' then return 0 end
        redis.call('HDEL', KEYS[1], 'callback_owner')
        redis.call('HSET', KEYS[1], 'callback_attempts', ARGV[8])
        if ARGV[10] ~= '' then redis.call('HSET', KEYS[1], 'callback_error', ARGV[10])
        else redis.call('HDEL', KEYS[1], 'callback_error') end
        if outcome == 'retry' then
          redis.call('HSET', KEYS[1], 'callback_next_at', ARGV[9])
          redis.call('ZADD', KEYS[2], tonumber(ARGV[9]), id)
        else
          redis.call('HSET', KEYS[1], 'callback_status', outcome)
          redis.call('HDEL', KEYS[1], 'callback_next_at')
          redis.call('ZREM', KEYS[2], id)
        end
        return 1
        """)

    /// `POST {jobs.path}/{id}/callback` (SPEC §4): an ended job's finished
    /// delivery starts a new round, due now. Returns the new round, 0 when
    /// the job has not ended or its delivery is still pending, nil when the
    /// job is unknown or has no callback. KEYS: job, callbacks. ARGV: id.
    public static let rearm = RedisScript("rearm", """
        local s = redis.call('HMGET', KEYS[1], 'status', 'callback_status', 'callback_round')
        if not s[1] or not s[2] then return false end
        if s[1] ~= 'completed' and s[1] ~= 'failed' then return 0 end
        if s[2] == 'pending' or s[2] == 'waiting' then return 0 end
        local round = tonumber(s[3] or '1') + 1
        redis.call('HSET', KEYS[1], 'callback_status', 'pending', 'callback_round', round, 'callback_attempts', 0,
          'callback_next_at', now)
        redis.call('HDEL', KEYS[1], 'callback_error', 'callback_owner')
        redis.call('ZADD', KEYS[2], now, ARGV[4])
        return round
        """)

    /// A job written but not acknowledged (too few Redis replicas had it
    /// within the deadline): taken back as if never made, its exchange
    /// stopped if a replica already runs it, its Idempotency-Key freed.
    /// KEYS: job, request, response, queue, delayed, running. ARGV: id.
    public static let withdraw = RedisScript("withdraw", """
        local id = ARGV[4]
        redis.call('LREM', KEYS[4], 1, id)
        redis.call('ZREM', KEYS[5], id)
        if redis.call('ZREM', KEYS[6], id) == 1 then redis.call('PUBLISH', P .. ':events', 'cancel ' .. id) end
        local key = redis.call('HGET', KEYS[1], 'idempotency_ref')
        if key then redis.call('DEL', key) end
        redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
        return 1
        """)

    /// The jobs by state across the replicas, for the gauges: queued
    /// (waiting or in a retry backoff), running (claimed), and webhook
    /// deliveries due or under way. ARGV: the upstreams' names.
    public static let counts = RedisScript("counts", """
        local queued, running = 0, 0
        for i = 4, #ARGV do
          queued = queued + redis.call('LLEN', P .. ':queue:' .. ARGV[i]) + redis.call('ZCARD', P .. ':delayed:' .. ARGV[i])
          running = running + redis.call('ZCARD', P .. ':running:' .. ARGV[i])
        end
        return {queued, running, redis.call('ZCARD', P .. ':callbacks')}
        """)

    public static let all = [create, createClaimed, claim, renew, finish, cancel, remove, claimDeliveries, finishDelivery, rearm, counts, withdraw, release]
}

/// An argument of a script call.
public enum RedisArgument: Sendable {
    case text(String)
    case bytes([UInt8])
    case number(Int64)
}

extension RedisConnection {
    /// Runs `script` by its SHA-1, and sends it whole when this Redis does
    /// not have it yet (a new server, or one restarted without persistence).
    public func run(_ script: RedisScript, keys: [String], prefix: String, now: Int64, ttlMillis: Int64,
                    _ arguments: [RedisArgument], _ done: @escaping (Result<RedisValue, RedisUnavailable>) -> Void) {
        send(script.command(keys: keys, prefix: prefix, now: now, ttlMillis: ttlMillis, arguments)) { [weak self] result in
            guard case .success(.error(let message)) = result, message.hasPrefix("NOSCRIPT"), let self else {
                done(result)
                return
            }
            self.send(script.command(keys: keys, prefix: prefix, now: now, ttlMillis: ttlMillis, arguments, whole: true), done)
        }
    }
}
