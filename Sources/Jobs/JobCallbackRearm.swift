import HTTP
import Loop
import Proxy
import Store

/// `POST {jobs.path}/{id}/callback`: a `failed` or `delivered` callback of
/// an ended job gets one more round of attempts (202 with the status JSON,
/// once that is durable); a pending one is left as it is (202 too). 409
/// while the job has not ended, when it was canceled or has no callback.
final class JobCallbackRearm: RequestHandler {
    private var client: HTTPServerConnection?

    init(jobs: JobLoop, client: HTTPServerConnection, record: JobRecord, base: [UInt8]) {
        self.client = client
        guard record.status == .completed || record.status == .failed, let callback = record.callback else {
            client.respondError(.callbackNotRearmable)
            return
        }
        if callback.isPending {
            jobs.answerStatus(client, record, status: 202, base: base)
            return
        }
        let bound = LoopBound(self, loop: jobs.loop)
        let jobsBound = LoopBound(jobs, loop: jobs.loop)
        let now = wallClockMillis()
        let rearmed = jobs.table.updateCallback(of: record.id, { c in
            c.isPending ? nil : c.with(status: .pending, attempts: 0, round: c.round + 1, lastError: .some(nil),
                                       nextAttemptAt: now)
        }, done: { error in
            bound.loop.execute {
                let me = bound.value
                guard error == nil, let r = jobsBound.value.table.lookup(record.id) else {
                    me.client?.respondError(.storeUnavailable)
                    return
                }
                jobsBound.value.answerStatus(me.client, r, status: 202, base: base)
            }
        })
        if rearmed == nil, let r = jobs.table.lookup(record.id) {
            jobs.answerStatus(client, r, status: 202, base: base)  // re-armed by another request meanwhile
        }
    }

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {}
    func requestEnd(connection: HTTPServerConnection) {}
    func connectionClosed(connection: HTTPServerConnection) {}

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}
