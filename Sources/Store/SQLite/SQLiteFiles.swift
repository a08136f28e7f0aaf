#if canImport(Glibc)
import Glibc
#endif

func errnoText() -> String { String(cString: strerror(errno)) }

/// `mkdir -p` of the database's directory (`makeDirectories`).
func createParentDirectories(of path: String) throws(StoreError) {
    guard let slash = path.lastIndex(of: "/") else { return }
    do {
        try makeDirectories(String(path[..<slash]))
    } catch {
        throw StoreError("sqlite: \(error.message)")
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
