#if canImport(Glibc)
import Glibc
#endif

/// The fuzz targets, one executable for all of them (`Scripts/fuzz`).
///
/// Built with `-sanitize=fuzzer,address -DCOATCHECK_FUZZ`, `main` hands the
/// process to libFuzzer (`LLVMFuzzerRunDriver`: SwiftPM names the
/// executable's entry point itself, so libFuzzer's own `main` cannot be
/// the one), which calls `LLVMFuzzerTestOneInput` with the target named by
/// `FUZZ_TARGET`. In the normal build (CI, `swift build`) `main` replays
/// files through a target instead, so the code always builds and runs.
enum FuzzTarget: String, CaseIterable {
    case head, chunked, response, config, duration, size, jobID = "job-id", prefer

    func run(_ data: UnsafeBufferPointer<UInt8>) {
        switch self {
        case .head: RequestTarget.run(data)
        case .chunked: ChunkedTarget.run(data)
        case .response: ResponseTarget.run(data)
        case .config: ConfigTarget.run(data)
        case .duration: DurationTarget.run(data)
        case .size: SizeTarget.run(data)
        case .jobID: JobIDTarget.run(data)
        case .prefer: PreferTarget.run(data)
        }
    }

    static let names = allCases.map(\.rawValue).joined(separator: " ")
}

/// Read once, at the first input.
private let selected: FuzzTarget = {
    guard let name = getenv("FUZZ_TARGET").map({ String(cString: $0) }), let target = FuzzTarget(rawValue: name) else {
        printError("set FUZZ_TARGET to one of: \(FuzzTarget.names)")
        exit(2)
    }
    return target
}()

private func printError(_ line: String) {
    var line = line + "\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    selected.run(UnsafeBufferPointer(start: data, count: size))
    return 0
}

#if COATCHECK_FUZZ
@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzer(
    _ argc: UnsafeMutablePointer<Int32>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ testOneInput: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32
) -> Int32

@main
enum Fuzzer {
    static func main() {
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(runFuzzer(&argc, &argv) { data, size in fuzzTestOneInput(data, size) })
    }
}
#else
/// `Fuzz TARGET FILE...`: each file through the target, without libFuzzer.
@main
enum Replay {
    static func main() {
        let arguments = CommandLine.arguments
        guard arguments.count >= 3, let target = FuzzTarget(rawValue: arguments[1]) else {
            printError("usage: Fuzz TARGET FILE...   (TARGET: \(FuzzTarget.names))")
            exit(2)
        }
        for path in arguments[2...] {
            guard let bytes = readAll(path) else {
                printError("cannot read \(path)")
                exit(1)
            }
            bytes.withUnsafeBufferPointer { target.run($0) }
            print("\(path): ok")
        }
    }

    static func readAll(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = fread(&buffer, 1, buffer.count, f)
            bytes += buffer[0..<n]
            if n < buffer.count { return ferror(f) == 0 ? bytes : nil }
        }
    }
}
#endif
