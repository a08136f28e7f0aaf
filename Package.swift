// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    // Release builds skip dynamic exclusivity checks: they showed up in
    // profiles of the per-request path (swift_beginAccess); debug keeps them.
    // Cross-module optimization lets the proxy inline the HTTP layer's small
    // writers and accessors.
    .unsafeFlags(["-enforce-exclusivity=unchecked", "-cross-module-optimization"], .when(configuration: .release)),
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    // C modules stay in the layer that wraps them: an import is internal
    // unless it says `public`.
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "coatcheck",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "coatcheck", targets: ["coatcheck"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.0"),
    ],
    targets: [
        // System libraries and the few inline shims Swift cannot see.
        .systemLibrary(name: "CLibevent", path: "Sources/CLibevent"),
        .systemLibrary(name: "CHTTPParser", path: "Sources/CHTTPParser"),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite"),
        .systemLibrary(name: "COpenSSL", path: "Sources/COpenSSL"),
        .systemLibrary(name: "CHiredis", path: "Sources/CHiredis"),

        // One event_base per thread; cross-thread hand-off; timers.
        .target(name: "Loop", dependencies: ["CLibevent"], swiftSettings: strict),
        // HTTP/1.1 server and client connections on libevent + http_parser; TLS clients on OpenSSL.
        .target(name: "HTTP", dependencies: ["Loop", "CLibevent", "CHTTPParser", "COpenSSL"], swiftSettings: strict),
        // Per-writer meter tables and the /metrics page (swift-prometheus).
        .target(name: "Meters", dependencies: [.product(name: "Prometheus", package: "swift-prometheus")],
                swiftSettings: strict),
        // The YAML configuration model and loader.
        .target(name: "Config", dependencies: [.product(name: "Yams", package: "Yams")], swiftSettings: strict),
        // Routes, upstream pools, header rules, the sync exchange, jobs on the wire.
        .target(
            name: "Proxy",
            dependencies: ["HTTP", "Loop", "Config", "Meters", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict
        ),
        // What makes a request a job: intake (the async/auto switch), dispatch,
        // the runner, retries, the job API and its JSON. Above Proxy.
        .target(
            name: "Jobs",
            dependencies: [
                "Proxy", "HTTP", "Loop", "Config", "Store", "Meters",
                .product(name: "Logging", package: "swift-log"), .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict
        ),
        // Job ids, records, the lifecycle, the stores (memory, SQLite, Redis) and the job table.
        .target(
            name: "Store",
            dependencies: ["Loop", "CSQLite", "CHiredis", "Meters", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict
        ),
        // /healthz /readyz /metrics /openapi.yaml.
        .target(name: "Admin", dependencies: ["HTTP", "Loop", "Meters"], swiftSettings: strict),
        // The slow synchronous backend for the quick start and the tests.
        .target(name: "DemoBackend", dependencies: ["HTTP", "Loop"], swiftSettings: strict),
        // Lifecycle: loops, listeners, signals, reload, drain.
        .target(
            name: "Server",
            dependencies: [
                "Loop", "HTTP", "Config", "Proxy", "Jobs", "Store", "Admin", "DemoBackend", "Meters",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "coatcheck",
            dependencies: [
                "Server", "Config",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // The fuzz targets, one executable: Scripts/fuzz builds it with
        // libFuzzer and ASan (-sanitize=fuzzer,address -DCOATCHECK_FUZZ); a
        // normal build gives it a main that replays inputs through a target.
        .executableTarget(
            name: "Fuzz",
            dependencies: ["HTTP", "Config", "Store", "Jobs"],
            path: "Tests/Fuzz/Sources",
            swiftSettings: strict
        ),

        // The tests' shared harness: loopback sockets, the raw and streaming
        // clients, the HTTP response parser, the fake upstream, the process
        // runner, waits and threads. Only test targets depend on it; it
        // depends on no product module.
        .target(name: "TestSupport", path: "Tests/TestSupport", swiftSettings: strict),

        .testTarget(name: "MetersTests", dependencies: ["Meters"], swiftSettings: strict),
        .testTarget(name: "HTTPTests", dependencies: ["HTTP", "Loop"], swiftSettings: strict),
        .testTarget(name: "ConfigTests", dependencies: ["Config", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "JobsTests",
            dependencies: ["Jobs", "Store", "Config", "HTTP", "Loop", "TestSupport", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        .testTarget(name: "StoreTests", dependencies: ["Store", "Loop", "CSQLite", "TestSupport"], swiftSettings: strict),
        .testTarget(
            name: "ProxyTests",
            dependencies: [
                "Server", "Proxy", "Jobs", "HTTP", "Loop", "Config", "Store", "DemoBackend", "Admin", "TestSupport",
            ],
            swiftSettings: strict
        ),
    ]
)
