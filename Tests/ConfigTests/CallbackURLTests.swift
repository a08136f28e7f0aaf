import Config
import Testing

// SPEC §4: callback URLs and `allow` prefixes, parsed by the same rules.

@Suite struct CallbackURLTests {
    func url(_ s: String) -> CallbackURL? { CallbackURL.parse(s) }

    @Test func partsAndDefaults() throws {
        let u = try #require(url("HTTPS://Hooks.Example.COM./a/b?x=1&y=%2F"))
        #expect(u.isTLS)
        #expect(u.host == "hooks.example.com")
        #expect(u.port == 443)
        #expect(u.path == "/a/b")
        #expect(u.requestTarget == "/a/b?x=1&y=%2F")
        #expect(u.hostHeader == "hooks.example.com")
        let plain = try #require(url("http://127.0.0.1:8080"))
        #expect(!plain.isTLS && plain.port == 8080 && plain.path == "/")
        #expect(plain.hostHeader == "127.0.0.1:8080")
        let v6 = try #require(url("http://[::1]:9/x"))
        #expect(v6.host == "::1" && v6.hostHeader == "[::1]:9")
    }

    @Test(arguments: [
        "", "hooks.example.com/x", "ftp://h/", "https://", "https:///x", "https://u@h/", "https://u:p@h/",
        "https://h/#f", "https://h#@evil/", "https://h:0/", "https://h:65536/", "https://h:/", "https://h:12a/",
        "https://h /x", "https://h/x y", "https://hé.example/", "https://h/é", "https://h/%zz", "https://h/%2",
        "https://h/a\\b", "https://h_x/", "https://[::1/", "https://[nothex]/", "https://a..b/", "https://.h/",
        "https://h/x?%g0",
    ])
    func malformedURLsAreRefused(_ s: String) {
        #expect(url(s) == nil, "\(s)")
    }

    @Test func tooLongIsRefused() {
        #expect(url("https://h/" + String(repeating: "a", count: 3000)) == nil)
    }

    @Test(arguments: [
        ("/a/./b", "/a/b"), ("/a/../b", "/b"), ("/../../etc", "/etc"), ("/a/%2e%2E/b", "/b"),
        ("/a/%2E/b", "/a/b"), ("/a/.%2e/b", "/b"), ("/a/b/..", "/a/"), ("/a/%2F../b", "/a/%2F../b"),
        ("/a/%2e%2e%2fb", "/a/%2e%2e%2fb"), ("/a/...", "/a/..."), ("", "/"),
    ])
    func dotSegmentsAreRemovedWithEncodedDotsCounted(raw: String, normalized: String) {
        #expect(url("https://h\(raw)")?.path == normalized, "\(raw)")
    }

    @Test func prefixesMatchAtSegmentBoundaries() throws {
        let hooks = try #require(url("https://hooks.example.com/hooks"))
        let slash = try #require(url("https://hooks.example.com/hooks/"))
        func allowed(_ s: String, _ p: CallbackURL) -> Bool { url(s)?.isAllowed(by: p) ?? false }
        #expect(allowed("https://hooks.example.com/hooks", hooks))
        #expect(allowed("https://hooks.example.com/hooks/x", hooks))
        #expect(allowed("HTTPS://HOOKS.EXAMPLE.COM:443/hooks/x", hooks))
        #expect(!allowed("https://hooks.example.com/hooksx", hooks))
        #expect(!allowed("https://hooks.example.com/hooks/../admin", hooks))
        #expect(!allowed("https://hooks.example.com/hooks/%2e%2e/admin", hooks))
        #expect(!allowed("http://hooks.example.com/hooks/x", hooks), "scheme")
        #expect(!allowed("https://hooks.example.com:8443/hooks/x", hooks), "port")
        #expect(!allowed("https://hooks.example.com.evil.com/hooks/x", hooks), "host")
        #expect(!allowed("https://evil.com/hooks.example.com/hooks/x", hooks))
        #expect(allowed("https://hooks.example.com/hooks/x", slash))
        #expect(!allowed("https://hooks.example.com/hooks", slash))
        #expect(allowed("https://hooks.example.com/anything", try #require(url("https://hooks.example.com"))))
        #expect(allowed("http://h/x", try #require(url("http://h:80/"))), "the effective port")
    }
}
