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
        "https://h/x?%g0", "https://hooks.example.com@evil.com/", "https://evil.com#@hooks.example.com/",
        "https://hooks.exämple.com/", "https://h/\tx", "https://h/x\r\n", "https://:443/", "https://h..:1/",
        "https://h:443:443/", "https://[::1]x/", "https://[::1]:0/", "https://[fe80::1%25eth0]/", "https://[v1.x]/",
        "https://127.1/", "https://0x7f.0.0.1/", "https://010.0.0.1/", "https://1.2.3.4.5/", "https://256.1.1.1/",
        "https://example.123/", "https://h\\@evil/", "https://evil\\hooks/", "https://h/a/%2F../b",
        "https://h/a/%2E%2E%2Fb", "https://h/a/%2e%2e%2fb", "https://h/hooks/..%2Fadmin", "https://h/hooks/..%5cx",
        "https://h/hooks/..;/admin", "https://h/hooks/.;x/", "https://h/hooks/%2E%2E;x", "https://h/x%2F.%2Fy",
        "https://" + String(repeating: "a", count: 64) + ".example/", "HTTPS//h/", "https:/h/", " https://h/",
    ])
    func malformedURLsAreRefused(_ s: String) {
        #expect(url(s) == nil, "\(s)")
    }

    @Test func tooLongIsRefused() {
        let base = "https://h/"
        #expect(url(base + String(repeating: "a", count: CallbackURL.maxLength - base.utf8.count)) != nil)
        #expect(url(base + String(repeating: "a", count: CallbackURL.maxLength - base.utf8.count + 1)) == nil)
        #expect(url("https://h/" + String(repeating: "a", count: 3000)) == nil)
    }

    @Test(arguments: [
        ("", CallbackURL.Refusal.empty), ("https://h/ x", .badByte), ("https://hé/", .badByte), ("https://h/#", .fragment),
        ("ftp://h/", .scheme), ("https://u@h/", .userinfo), ("https://h_/", .host), ("https://127.1/", .numericHost),
        ("https://h:99999/", .port), ("https://h/%2", .percentEncoding), ("https://h/a|b", .pathByte),
        ("https://h/..%2F", .hiddenDotSegment),
    ])
    func refusalsSayWhy(text: String, refusal: CallbackURL.Refusal) {
        #expect(CallbackURL.parsing(text) == .failure(refusal), "\(text)")
    }

    @Test func hostsAreNormalized() throws {
        #expect(url("https://HOOKS.Example.com./x")?.host == "hooks.example.com")
        #expect(url("https://10.0.0.1/")?.host == "10.0.0.1")
        #expect(url("https://0.0.0.0/")?.host == "0.0.0.0")
        #expect(url("https://0x.example/")?.host == "0x.example", "only the last label decides")
        #expect(url("https://a-b.c1/")?.host == "a-b.c1")
        #expect(url("https://" + String(repeating: "a", count: 63) + ".example/") != nil)
        let v6 = try #require(url("https://[0:0:0:0:0:0:0:1]:8443/"))
        #expect(v6.host == "::1" && v6.port == 8443 && v6.hostHeader == "[::1]:8443")
        #expect(url("http://[::FFFF:127.0.0.1]/")?.host == "::ffff:127.0.0.1")
        #expect(url("http://[2001:DB8::1]/")?.hostHeader == "[2001:db8::1]")
        #expect(url("https://h:0443/")?.port == 443)
    }

    @Test(arguments: [
        "HTTPS://HOOKS.example.com:443/a", "https://hooks.example.com/a/../../etc", "https://h/a/%2e%2e/b?q=%2F",
        "http://[0::1]:80/%68i/", "http://h:8080", "https://h/a%2fb/./c/..",
        "https://h?x=1", "https://h/a;b/~c%7E",
    ])
    func theDescriptionParsesBackToTheSameURL(text: String) throws {
        let u = try #require(url(text))
        #expect(url(u.description) == u, "\(u)")
    }

    @Test func theConnectionPieces() throws {
        let u = try #require(url("HTTPS://HOOKS.example.com:443/a/./b?x=%2f&y"))
        #expect(u.scheme == "https" && u.isTLS && u.host == "hooks.example.com" && u.port == 443)
        #expect(u.requestTarget == "/a/b?x=%2f&y", "the query verbatim, the path normalized")
        #expect(u.hostHeader == "hooks.example.com")
        #expect(u.description == "https://hooks.example.com/a/b?x=%2f&y")
        let p = try #require(url("http://h:80?"))
        #expect(p.requestTarget == "/?" && p.hostHeader == "h" && !p.isTLS)
    }

    @Test(arguments: [
        ("/a/./b", "/a/b"), ("/a/../b", "/b"), ("/../../etc", "/etc"), ("/a/%2e%2E/b", "/b"),
        ("/a/%2E/b", "/a/b"), ("/a/.%2e/b", "/b"), ("/a/b/..", "/a/"), ("/a/...", "/a/..."), ("", "/"),
        ("/a/../../etc", "/etc"), ("/a/b/.", "/a/b/"), ("//a", "//a"), ("/a//../b", "/a/b"),
        ("/%68ooks/x", "/hooks/x"), ("/a%2fb", "/a%2Fb"), ("/%7e%41%5f", "/~A_"), ("/a%20b", "/a%20b"),
        ("/a/b%2Fc", "/a/b%2Fc"), ("/a/...;x/b", "/a/...;x/b"), ("/a;p/b", "/a;p/b"),
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
        #expect(allowed("http://h:80/x", try #require(url("http://h/"))), "the effective port")
        #expect(!allowed("http://h:443/x", try #require(url("https://h/"))), "scheme, not port")
        #expect(!allowed("https://h:80/x", try #require(url("http://h/"))), "scheme, not port")
    }

    @Test func trickySpellingsAgainstOnePrefix() throws {
        let p = try #require(url("https://hooks.example.com/hooks/"))
        func allowed(_ s: String) -> Bool { url(s)?.isAllowed(byAny: [p]) ?? false }
        for yes in [
            "https://hooks.example.com/hooks/a", "HTTPS://HOOKS.EXAMPLE.COM:443/hooks/a", "https://hooks.example.com./hooks/a",
            "https://hooks.example.com/x/../hooks/a", "https://hooks.example.com/%68ooks/a", "https://hooks.example.com/hooks/",
            "https://hooks.example.com/hooks/a/..", "https://hooks.example.com/hooks/a%2Fb", "https://hooks.example.com/hooks/a?../x",
        ] {
            #expect(allowed(yes), "\(yes)")
        }
        for no in [
            "https://hooks.example.com/hooks", "https://hooks.example.com/hooksevil", "https://hooks.example.com/hooks/..",
            "https://hooks.example.com/hooks/../x", "https://hooks.example.com/hooks/%2e%2e/x", "https://hooks.example.com/hooks/.%2E/x",
            "https://hooks.example.com/hooks/a/../../x", "https://hooks.example.com/HOOKS/a", "https://hooks.example.com:8443/hooks/a",
            "http://hooks.example.com/hooks/a", "https://hooks.example.com.evil.com/hooks/a", "https://evil.com/hooks/a",
            "https://hooks.example.com@evil.com/hooks/a", "https://evil.com#@hooks.example.com/hooks/a",
            "https://hooks.example.com/hooks/..%2Fx", "https://hooks.example.com/hooks/..;/x", "https://xhooks.example.com/hooks/a",
        ] {
            #expect(!allowed(no), "\(no)")
        }
    }

    @Test func prefixesAreNormalizedToo() throws {
        let p = try #require(url("HTTPS://H.EXAMPLE:443/a/../%62/"))
        #expect(p.path == "/b/")
        #expect(url("https://h.example/b/x")?.isAllowed(by: p) == true)
        let v6 = try #require(url("http://[::1]:9000/cb"))
        #expect(url("http://[0:0::1]:9000/cb/1")?.isAllowed(by: v6) == true)
        #expect(url("http://[::2]:9000/cb/1")?.isAllowed(by: v6) == false)
        #expect(url("http://127.0.0.1:9000/cb/1")?.isAllowed(by: v6) == false)
        #expect(url("https://h/x")?.isAllowed(byAny: []) == false)
    }
}
