import Config

/// The YAML configuration loader on any text: a configuration or a
/// `ConfigError`, never a crash; the error is what SPEC §1 prints, one line
/// `FILE:LINE:COL: message` with 1-based positions.
enum ConfigTarget {
    static let environment = ["FUZZ_SECRET": "whsec_ZnV6ei1zZWNyZXQtZm9yLXRoZS1jb25maWctdGFyZ2V0"]

    static func run(_ data: UnsafeBufferPointer<UInt8>) {
        let yaml = String(decoding: data, as: UTF8.self)
        do {
            let config = try ConfigLoader.parse(yaml: yaml, file: "fuzz.yaml", environment: environment)
            require(!config.routes.isEmpty, "a configuration without routes accepted")
        } catch {
            require(error.file == "fuzz.yaml", "error names \(error.file)")
            require(error.line >= 1 && error.column >= 1, "error at \(error.line):\(error.column)")
            require(!error.message.isEmpty, "empty error message")
            let line = error.description
            require(!line.contains(where: \.isNewline), "error is not one line: \(line.debugDescription)")
        }
    }
}
