import Config
import Foundation
import Store
import TestSupport
import Testing

@Suite struct JobSpoolRecoveryTests {
    /// A request spooled by a process that died before committing its job
    /// leaves a file no job names: the next start removes it, and nothing else.
    @Test func orphanSpoolFilesAreRemovedAtStart() throws {
        let backend = try InProcessBackend()
        let dir = makeTempDirectory()
        let orphan = dir + "/" + JobID.random().text + ".req"
        let unrelated = dir + "/notes.txt"
        #expect(FileManager.default.createFile(atPath: orphan, contents: Data("POST body".utf8)))
        #expect(FileManager.default.createFile(atPath: unrelated, contents: Data("keep".utf8)))
        let proxy = try TestProxy(upstreamPort: backend.port) { c in c.jobs.dir = dir }
        _ = proxy
        #expect(!FileManager.default.fileExists(atPath: orphan))
        #expect(FileManager.default.fileExists(atPath: unrelated))
    }
}
