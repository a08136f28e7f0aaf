import Config
import HTTP
import Store
import Logging
import Loop
import Proxy

/// DELETE: a pending job is canceled (a running exchange aborted) and
/// answered 200 with its status; a finished one is deleted, 204. The answer
/// waits for the store.
final class JobDelete: RequestHandler {
    private var client: HTTPServerConnection?
    /// The canceled job as this request made it (what it answers with,
    /// even if a second DELETE removed the job meanwhile).
    private var canceled: JobRecord?

    init(jobs: JobLoop, client: HTTPServerConnection, record: JobRecord, base: [UInt8]) {
        self.client = client
        let bound = LoopBound(self, loop: jobs.loop)
        let jobsBound = LoopBound(jobs, loop: jobs.loop)
        let id = record.id
        if !record.status.isTerminal {
            canceled = jobs.table.cancel(id) { error in
                bound.loop.execute {
                    let delete = bound.value
                    guard error == nil, let r = delete.canceled else {
                        delete.client?.respondError(.storeUnavailable)
                        return
                    }
                    jobsBound.value.answerStatus(delete.client, r, status: 200, base: base)
                }
            }
            if canceled != nil { return }
        }
        // Terminal (or it became terminal just now): delete it.
        jobs.table.remove([id]) { error in
            bound.loop.execute {
                guard let client = bound.value.client else { return }
                if error != nil {
                    client.respondError(.storeUnavailable)
                } else {
                    client.startResponse(status: 204, framing: .none(contentLength: nil)) { _ in }
                    client.endResponse()
                }
            }
        }
    }

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {}
    func requestEnd(connection: HTTPServerConnection) {}
    func connectionClosed(connection: HTTPServerConnection) {}

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}
