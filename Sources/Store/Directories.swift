#if canImport(Glibc)
import Glibc
#endif

/// `mkdir -p`: each missing directory of `path` is made 0700 (it holds
/// requests, responses, the database). Existing ones are left as they are.
public func makeDirectories(_ path: String) throws(StoreError) {
    var current = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        current += "/" + component
        if mkdir(current, 0o700) == 0 {
            chmod(current, 0o700)  // whatever the umask
        } else if errno != EEXIST {
            throw StoreError("cannot create directory \(current): \(String(cString: strerror(errno)))")
        }
    }
}

/// The names in directory `path` (without `.` and `..`); empty when it
/// cannot be read.
public func directoryEntries(_ path: String) -> [String] {
    guard let d = opendir(path) else { return [] }
    defer { closedir(d) }
    var names: [String] = []
    while let entry = readdir(d) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}
