import Config
import HTTP
import Store
import Logging
import Loop
import Proxy

/// A long poll: held until the job ends (woken by the table from whichever
/// loop ended it) or the wait runs out, then answered as a plain GET.
final class JobPoll: RequestHandler {
    unowned let jobs: JobLoop
    private var client: HTTPServerConnection?
    private let id: JobID
    private let result: Bool
    private let base: [UInt8]
    private var token: Int?
    private var timer: Timer!
    private var answered = false

    init(jobs: JobLoop, client: HTTPServerConnection, id: JobID, result: Bool, base: [UInt8], seconds: Int) {
        self.jobs = jobs
        self.client = client
        self.id = id
        self.result = result
        self.base = base
        timer = Timer(loop: jobs.loop) { [unowned self] in self.answer() }
        let bound = LoopBound(self, loop: jobs.loop)
        token = jobs.table.wait(for: id, loop: jobs.loop) { bound.value.answer() }
        if token == nil {
            answer()
        } else {
            timer.schedule(after: .seconds(seconds))
        }
    }

    func answer() {
        guard !answered else { return }
        answered = true
        timer.cancel()
        if let token { jobs.table.stopWaiting(id, token: token) }
        token = nil
        guard let record = jobs.table.lookup(id) else {
            client?.respondError(.jobNotFound)
            return
        }
        if result {
            jobs.answerResult(client, record, preference: nil, base: base)
        } else {
            jobs.answerStatus(client, record, status: 200, base: base)
        }
    }

    func requestBody(_ buffer: EventBuffer, connection: HTTPServerConnection) {}
    func requestEnd(connection: HTTPServerConnection) {}

    func connectionClosed(connection: HTTPServerConnection) {
        answered = true
        timer.cancel()
        if let token { jobs.table.stopWaiting(id, token: token) }
        token = nil
    }

    func detached(from connection: HTTPServerConnection) {
        client = nil
    }
}
