#if canImport(Glibc)
import Glibc
#endif

func errnoText() -> String { String(cString: strerror(errno)) }

/// `mkdir -p` of the database's directory; directories it makes are 0700.
func createParentDirectories(of path: String) throws(StoreError) {
    var components = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    components.removeLast()
    var current = path.hasPrefix("/") ? "" : "."
    for component in components where !component.isEmpty {
        current += "/" + component
        if mkdir(current, 0o700) == 0 {
            chmod(current, 0o700)
        } else if errno != EEXIST {
            throw StoreError("sqlite: cannot create directory \(current): \(errnoText())")
        }
    }
}

/// Creates the database file 0600 (whatever the umask) before SQLite opens
/// it, so it never exists with wider permissions; an existing database is
/// narrowed to 0600 too, since it holds request headers. Returns the open
/// descriptor (the caller locks it).
func createPrivateFile(_ path: String) throws(StoreError) -> Int32 {
    let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw StoreError("sqlite: cannot create \(path): \(errnoText())") }
    var keep = false
    defer { if !keep { _ = Glibc.close(fd) } }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw StoreError("sqlite: cannot stat \(path): \(errnoText())") }
    if info.st_mode & 0o7777 != 0o600 && fchmod(fd, 0o600) != 0 {
        throw StoreError("sqlite: cannot chmod \(path) to 0600: \(errnoText())")
    }
    keep = true
    return fd
}

/// fsync(2) of a file or directory by path.
func fsyncPath(_ path: String) throws(StoreError) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw StoreError("sqlite: cannot open \(path) to sync it: \(errnoText())") }
    defer { _ = Glibc.close(fd) }
    guard fsync(fd) == 0 else { throw StoreError("sqlite: cannot sync \(path): \(errnoText())") }
}
