import Foundation

/// A fresh directory under /tmp.
public func makeTempDirectory(prefix: String = "coatcheck-test") -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    let p = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(p != nil, "mkdtemp failed")
    return String(cString: p!)
}

/// Removes `path` and everything under it.
public func removeTree(_ path: String) {
    if let dir = opendir(path) {
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            let child = path + "/" + name
            if Int(entry.pointee.d_type) == Int(DT_DIR) { removeTree(child) } else { unlink(child) }
        }
        closedir(dir)
    }
    rmdir(path)
}

/// Writes `text` to a new file in the temporary directory; returns its path.
public func writeTempFile(_ text: String, suffix: String = ".yaml") throws -> String {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("coatcheck-test-\(UUID().uuidString)\(suffix)").path
    try text.write(toFile: path, atomically: true, encoding: .utf8)
    return path
}

/// A file in Tests/Fixtures.
public func fixturePath(_ name: String) -> String {
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures").appendingPathComponent(name).path
}
