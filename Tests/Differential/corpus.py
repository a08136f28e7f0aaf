# The differential corpus (Scripts/differential): request heads and bodies,
# valid and malformed, covering the request-smuggling families of RFC 9112.
#
# generate(seed) returns a list of Case, the same list for the same seed.
# Every case is one message as a client would send it on a fresh
# connection (trailing bytes after it are allowed: they are the start of
# whatever the parser takes for the next message). Where a case has a
# free choice of target, the target carries "/d/<n>.<check>" with the case's
# number, so the recording backend can tell which case a request it got
# came from.
#
# Families are written out by hand below (each a few dozen variants, some
# multiplied by random carriers: method, header order and case, extra
# fields, bodies), then random byte-level mutants of valid requests.

import random
from dataclasses import dataclass

CRLF = b"\r\n"


@dataclass
class Case:
    n: int
    family: str
    note: str
    data: bytes

    @property
    def name(self):
        return f"{self.family}#{self.n}"


def check(n):
    return (n * 7919 + 13) % 99991


def path(n):
    # The number and a check of it: a mutant that changes either is not
    # taken for another case's request.
    return b"/d/%d.%d" % (n, check(n))


def request(t, method=b"GET", version=b"HTTP/1.1", headers=((b"Host", b"a.test"),), body=b"",
            eol=CRLF, target=None, line=None, prefix=b""):
    """A request: `headers` are (name, value) pairs joined by ': ', or raw
    bytes lines; `line` replaces the whole request line."""
    if line is None:
        line = method + b" " + (t if target is None else target) + b" " + version
    out = [prefix, line, eol]
    for h in headers:
        if isinstance(h, bytes):
            out += [h, eol]
        else:
            out += [h[0], b": ", h[1], eol]
    out += [eol, body]
    return b"".join(out)


def chunked(body, sizes=None, ext=b"", trailers=(), upper=False, rng=None):
    """`body` in chunks; `sizes` the chunk lengths (the rest in one chunk)."""
    out = []
    i = 0
    sizes = list(sizes) if sizes is not None else []
    if rng is not None and not sizes and body:
        while i < len(body):
            k = rng.randint(1, max(1, len(body) - i))
            sizes.append(k)
            i += k
        i = 0
    for k in sizes + [len(body) - sum(sizes)]:
        if k <= 0:
            continue
        size = b"%X" % k if upper else b"%x" % k
        out += [size, ext, CRLF, body[i:i + k], CRLF]
        i += k
    out += [b"0", ext, CRLF]
    for t in trailers:
        out += [t, CRLF]
    out += [CRLF]
    return b"".join(out)


class Builder:
    def __init__(self, seed):
        self.rng = random.Random(seed)
        self.cases = []

    def add(self, family, note, make):
        """`make(target)` gives the bytes; target is "/d/<n>.<check>"."""
        n = len(self.cases)
        data = make(path(n)) if callable(make) else make
        self.cases.append(Case(n, family, note, data))

    # Random carriers, so one rule is seen in several settings.

    def token(self, lo=1, hi=12):
        alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#$%&'*+^`|~"
        return "".join(self.rng.choice(alphabet) for _ in range(self.rng.randint(lo, hi))).encode()

    def value(self, lo=0, hi=24):
        """A valid field value: VCHAR and obs-text, inner SP/HTAB, no OWS at the ends."""
        n = self.rng.randint(lo, hi)
        out = bytearray()
        for i in range(n):
            r = self.rng.random()
            if r < 0.8:
                out.append(self.rng.randint(0x21, 0x7E))
            elif r < 0.9 and 0 < i < n - 1:
                out.append(self.rng.choice(b" \t"))
            else:
                out.append(self.rng.randint(0x80, 0xFF))
        return bytes(out)

    def extras(self, k=None):
        """A few end-to-end fields with random names and values."""
        k = self.rng.randint(0, 3) if k is None else k
        names = [b"X-" + self.token(1, 8) for _ in range(k)]
        return [(nm, self.value()) for nm in names]

    def body(self, lo=0, hi=200):
        return bytes(self.rng.randint(0, 255) for _ in range(self.rng.randint(lo, hi)))

    def method(self, with_body=True):
        if with_body:
            return self.rng.choice([b"POST", b"PUT", b"PATCH", b"POST"])
        return self.rng.choice([b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"GET"])

    def shuffle_with_host(self, fields, host=(b"Host", b"a.test")):
        fields = list(fields)
        fields.insert(self.rng.randint(0, len(fields)), host)
        return fields


def valid(b):
    rng = b.rng
    for i in range(180):
        with_body = rng.random() < 0.55
        m = b.method(with_body)
        fields = b.extras()
        body = b""
        kind = "no body"
        if with_body:
            body = b.body()
            if rng.random() < 0.5:
                fields.append((rng.choice([b"Content-Length", b"content-length", b"CONTENT-LENGTH"]), b"%d" % len(body)))
                kind = "content-length"
            else:
                fields.append((rng.choice([b"Transfer-Encoding", b"transfer-encoding"]), b"chunked"))
                body = chunked(body, rng=rng, upper=rng.random() < 0.3)
                kind = "chunked"
        if rng.random() < 0.2:
            fields.append((b"Connection", rng.choice([b"keep-alive", b"close", b"X-Hop, keep-alive"])))
            fields.append((b"X-Hop", b"nominated"))
        if rng.random() < 0.15:
            fields.append((b"X-Forwarded-For", b"192.0.2.%d" % rng.randint(1, 254)))
        if rng.random() < 0.1:
            fields.append((b"Keep-Alive", b"timeout=5"))
        if rng.random() < 0.1:
            fields.append((b"Upgrade", b"websocket"))
        if rng.random() < 0.1:
            fields.append((b"TE", b"trailers"))
        fields = b.shuffle_with_host(fields, (rng.choice([b"Host", b"host", b"HOST"]),
                                              rng.choice([b"a.test", b"a.test:8080", b"127.0.0.1", b"[::1]:80"])))
        version = b"HTTP/1.0" if not with_body and rng.random() < 0.1 else b"HTTP/1.1"
        q = b"?q=%d&r=%s" % (i, b.token(0, 5)) if rng.random() < 0.3 else b""
        b.add("valid", f"{m.decode()} {kind}", lambda t, m=m, f=fields, body=body, v=version, q=q:
              request(t + q, method=m, version=v, headers=f, body=body))
    # Field value whitespace and emptiness.
    for v in [b"", b" ", b"\t", b"  x  ", b"\tx\t", b"x y", b"x\ty", b" \t x \t ", b"\x80\xff", b"a:b:c", b"\"quoted\""]:
        b.add("valid", f"value {v!r}", lambda t, v=v: request(t, headers=[(b"Host", b"a.test")], body=b"")
              .replace(b"\r\n\r\n", b"\r\nX-V:" + v + b"\r\n\r\n", 1))
    b.add("valid", "Expect: 100-continue with a body", lambda t: request(
        t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Expect", b"100-continue"), (b"Content-Length", b"3")], body=b"abc"))
    b.add("valid", "Content-Length: 0 on GET", lambda t: request(t, headers=[(b"Host", b"a.test"), (b"Content-Length", b"0")]))
    b.add("valid", "many fields", lambda t: request(t, headers=[(b"Host", b"a.test")] + [(b"X-%d" % k, b"v%d" % k) for k in range(60)]))
    b.add("valid", "repeated end-to-end field", lambda t: request(t, headers=[(b"Host", b"a.test"), (b"Accept", b"a"), (b"Accept", b"b")]))


def content_length(b):
    rng = b.rng
    body = b"hello"
    forms = [
        (b"5", "plain"), (b"05", "leading zero"), (b"0005", "leading zeros"), (b"00000000000000000005", "20 digits"),
        (b"000000000000000005", "18 digits"), (b"0000000000000000005", "19 digits"),
        (b"5, 5", "list of equal values"), (b"5,5", "list without space"), (b"5 , 5", "list, space before comma"),
        (b"5, 6", "list of different values"), (b"5,", "trailing comma"), (b",5", "leading comma"),
        (b"+5", "plus sign"), (b"-5", "negative"), (b"0x5", "hex"), (b"5.0", "decimal point"), (b"5e0", "exponent"),
        (b"", "empty"), (b" ", "only space"), (b"5 5", "two numbers"), (b"5;x", "parameter"), (b"\"5\"", "quoted"),
        (b"99999999999999999999999", "overflow"), (b"4", "shorter than the body"), (b"6", "longer than the body"),
        (b"0", "zero with a body"), (b"\t5\t", "tabs around"), (b"\xd9\xa5", "non-ASCII digit"),
    ]
    for v, note in forms:
        m = b.method(True)
        b.add("content-length", note, lambda t, v=v, m=m: request(
            t, method=m, headers=b.shuffle_with_host([(b"Content-Length", v)] + b.extras(1)), body=body))
    dups = [((b"5", b"5"), "two equal"), ((b"5", b"6"), "two different"), ((b"5", b"05"), "equal value, different text"),
            ((b"5", b""), "second empty"), ((b"5", b"5, 5"), "line and list")]
    for (v1, v2), note in dups:
        for name2 in [b"Content-Length", b"content-length"]:
            b.add("content-length", f"two fields: {note}", lambda t, v1=v1, v2=v2, n2=name2: request(
                t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Content-Length", v1), (b"X-A", b"b"), (n2, v2)], body=body))
    for name in [b"Content-Length ", b"Content-Length\t", b" Content-Length", b"Content_Length", b"Content-Lengt", b"Content-Length-X"]:
        b.add("content-length", f"name {name!r}", lambda t, name=name: request(
            t, method=b"POST", headers=[(b"Host", b"a.test"), (name, b"5")], body=body))
    for k in range(12):
        n = rng.randint(0, 40)
        data = b.body(n, n)
        b.add("content-length", f"random body {n}", lambda t, d=data: request(
            t, method=b"PUT", headers=[(b"Host", b"a.test"), (b"Content-Length", b"%d" % len(d))], body=d))


def transfer_encoding(b):
    rng = b.rng
    body = chunked(b"hello world", [5])
    values = [
        b"chunked", b"Chunked", b"CHUNKED", b"cHuNkEd", b" chunked", b"chunked ", b"\tchunked", b"chunked\t",
        b"chunked, chunked", b"gzip, chunked", b"chunked, gzip", b"identity, chunked", b"chunked, identity",
        b"identity", b"gzip", b"deflate", b"compress", b"x-chunked", b"chunkedx", b"chunk", b"chunked;q=1",
        b"chunked,", b",chunked", b", chunked", b"chunked,,", b"\"chunked\"", b"", b" ", b"chunked\x0b",
        b"\x0bchunked", b"chunked\x0c", b"chunked\x00", b"ch unked", b"chunked\xff", b"\xffchunked",
    ]
    for v in values:
        m = b.method(True)
        b.add("transfer-encoding", f"value {v!r}", lambda t, v=v, m=m: request(
            t, method=m, headers=b.shuffle_with_host([(b"Transfer-Encoding", v)] + b.extras(1)), body=body))
    for name in [b"transfer-encoding", b"TRANSFER-ENCODING", b"Transfer-Encoding ", b"Transfer-Encoding\t",
                 b"Transfer_Encoding", b" Transfer-Encoding", b"Transfer-Encodings", b"Transfer-Encoding\x0b"]:
        b.add("transfer-encoding", f"name {name!r}", lambda t, name=name: request(
            t, method=b"POST", headers=[(b"Host", b"a.test"), (name, b"chunked")], body=body))
    pairs = [(b"chunked", b"chunked"), (b"gzip", b"chunked"), (b"chunked", b"gzip"), (b"chunked", b"identity"),
             (b"chunked", b"")]
    for v1, v2 in pairs:
        b.add("transfer-encoding", f"two fields {v1!r} {v2!r}", lambda t, v1=v1, v2=v2: request(
            t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Transfer-Encoding", v1), (b"Transfer-Encoding", v2)], body=body))
    # CL with TE, in either order, CL right for the raw body, for the decoded one, or 0.
    for cl in [b"%d" % len(body), b"11", b"0", b"3", b"5, 5"]:
        for te_first in (True, False):
            te = (b"Transfer-Encoding", b"chunked")
            c = (b"Content-Length", cl)
            fields = [te, c] if te_first else [c, te]
            b.add("cl-te", f"CL {cl!r} {'after' if te_first else 'before'} TE", lambda t, f=fields: request(
                t, method=b"POST", headers=[(b"Host", b"a.test")] + f, body=body))
    # The classic desync payloads: the body a CL reader and a TE reader split differently.
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n"
    te_cl = b"0\r\n\r\n" + smuggled
    b.add("cl-te", "CL.TE: CL covers the smuggled request", lambda t: request(
        t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Content-Length", b"%d" % len(te_cl)), (b"Transfer-Encoding", b"chunked")], body=te_cl))
    tail = b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
    b.add("cl-te", "TE.CL: CL stops at the chunk size", lambda t: request(
        t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked")], body=tail))
    b.add("cl-te", "TE hidden by a space before the colon", lambda t: request(
        t, method=b"POST", headers=[(b"Host", b"a.test"), b"Transfer-Encoding : chunked", (b"Content-Length", b"%d" % len(te_cl))], body=te_cl))
    b.add("cl-te", "TE obs-folded, with CL", lambda t: request(
        t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Content-Length", b"%d" % len(te_cl)), b"Transfer-Encoding:", b" chunked"], body=te_cl))
    b.add("cl-te", "TE on HTTP/1.0", lambda t: request(
        t, method=b"POST", version=b"HTTP/1.0", headers=[(b"Host", b"a.test"), (b"Transfer-Encoding", b"chunked")], body=body))
    b.add("cl-te", "TE and CL on HTTP/1.0", lambda t: request(
        t, method=b"POST", version=b"HTTP/1.0", headers=[(b"Host", b"a.test"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], body=body))
    for i in range(10):
        data = b.body(1, 60)
        b.add("transfer-encoding", "random chunking", lambda t, d=data: request(
            t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Transfer-Encoding", b"chunked")], body=chunked(d, rng=rng)))


def obs_fold(b):
    for name in [b"X-A", b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection"]:
        first = {b"X-A": b"one", b"Host": b"a.test", b"Content-Length": b"5", b"Transfer-Encoding": b"chunked",
                 b"Connection": b"close"}[name]
        for cont in [b" two", b"\ttwo", b"  two", b" ", b"\t", b" \t"]:
            b.add("obs-fold", f"{name.decode()} folded with {cont!r}", lambda t, name=name, first=first, cont=cont: request(
                t, method=b"POST", headers=[(b"Host", b"a.test") if name != b"Host" else b"X-B: c", name + b": " + first, cont,
                                            (b"Content-Length", b"5") if name != b"Content-Length" else b"X-C: d"],
                body=b"hello"))
    b.add("obs-fold", "fold as the first field line", lambda t: request(t, headers=[b" X-A: b", (b"Host", b"a.test")]))
    b.add("obs-fold", "tab before the first field line", lambda t: request(t, headers=[b"\tHost: a.test"]))
    b.add("obs-fold", "fold with bare LF", lambda t: request(t, headers=[(b"Host", b"a.test"), b"X-A: one\n two"]))


def line_endings(b):
    rng = b.rng
    base = [(b"Host", b"a.test"), (b"X-A", b"b"), (b"Content-Length", b"5")]
    b.add("line-endings", "bare LF everywhere", lambda t: request(t, method=b"POST", headers=base, body=b"hello", eol=b"\n"))
    for i in range(12):
        def mixed(t):
            parts = [b"POST " + t + b" HTTP/1.1"] + [n + b": " + v for n, v in base]
            out = b""
            for p in parts + [b""]:
                out += p + rng.choice([b"\r\n", b"\n"])
            return out + b"hello"
        b.add("line-endings", "mixed CRLF and LF", mixed)
    raw = [
        (b"GET %s HTTP/1.1\rHost: a.test\r\n\r\n", "bare CR after the request line"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\rX-A: b\r\n\r\n", "bare CR between fields"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\r\r\n\r\n", "CR CR LF"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\r\n\r\r\n", "CR CR LF ending the head"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\r\nX-A: b\rc\r\n\r\n", "bare CR in a value"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\r\nX-A: b\r\n\r", "head ends with a lone CR"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\n\r\n", "LF then CRLF ends the head"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\r\n\n", "CRLF then LF ends the head"),
        (b"GET %s HTTP/1.1\n\rHost: a.test\r\n\r\n", "LF CR inside the head"),
        (b"\r\nGET %s HTTP/1.1\r\nHost: a.test\r\n\r\n", "an empty line before the request line"),
        (b"\nGET %s HTTP/1.1\r\nHost: a.test\r\n\r\n", "a bare LF before the request line"),
        (b"\r\n\r\nGET %s HTTP/1.1\r\nHost: a.test\r\n\r\n", "two empty lines before the request line"),
        (b" GET %s HTTP/1.1\r\nHost: a.test\r\n\r\n", "a space before the request line"),
        (b"\rGET %s HTTP/1.1\r\nHost: a.test\r\n\r\n", "a bare CR before the request line"),
        (b"GET %s HTTP/1.1\r\n\r\nHost: a.test\r\n\r\n", "an empty line before the fields"),
        (b"GET %s HTTP/1.1\r\n \r\nHost: a.test\r\n\r\n", "whitespace line before the fields"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\r\n \r\n\r\n", "whitespace-only line after a field"),
        (b"GET %s HTTP/1.1\r\nHost: a.test \r\n\r\n", "trailing space on a field line"),
        (b"GET %s HTTP/1.1\r\nHost: a.test\r\n\t\r\n\r\n", "tab-only line"),
    ]
    for fmt, note in raw:
        b.add("line-endings", note, lambda t, fmt=fmt: fmt % t)


def field_names(b):
    for sep, note in [(b" :", "space before the colon"), (b"\t:", "tab before the colon"), (b"  :", "two spaces before the colon")]:
        for name in [b"X-A", b"Host", b"Content-Length", b"Connection"]:
            b.add("field-names", f"{name.decode()}: {note}", lambda t, name=name, sep=sep: request(
                t, headers=[(b"Host", b"a.test") if name != b"Host" else b"X-B: c", name + sep + b" b"]))
    for line, note in [(b": v", "empty name"), (b" : v", "space as the name"), (b"X A: v", "space in a name"),
                       (b"X\tA: v", "tab in a name"), (b"X-A v", "no colon"), (b"X-A", "name only"), (b":", "colon only"),
                       (b"X-A:: v", "two colons"), (b"X-A:v", "no space after the colon"), (b"X-A:\tv", "tab after the colon")]:
        b.add("field-names", note, lambda t, line=line: request(t, headers=[(b"Host", b"a.test"), line]))
    for c in b"\"(),/;<=>?@[\\]{}" + bytes([0x00, 0x01, 0x0b, 0x0c, 0x7f, 0x80, 0xc3, 0xff]):
        b.add("field-names", f"byte {c:#04x} in a name", lambda t, c=c: request(
            t, headers=[(b"Host", b"a.test"), b"X-" + bytes([c]) + b"A: v"]))
    for name in [b"!#$%&'*+-.^_`|~", b"x", b"0", b"X-" + b"a" * 200]:
        b.add("field-names", f"token name {name[:20]!r}", lambda t, name=name: request(t, headers=[(b"Host", b"a.test"), (name, b"v")]))


def field_values(b):
    for c in list(range(0x00, 0x20)) + [0x7f]:
        if c in (0x0a,):
            continue
        for where in ("inside", "start", "end"):
            v = {"inside": b"a" + bytes([c]) + b"b", "start": bytes([c]) + b"ab", "end": b"ab" + bytes([c])}[where]
            b.add("field-values", f"byte {c:#04x} {where} a value", lambda t, v=v: request(
                t, headers=[(b"Host", b"a.test"), (b"X-A", v)]))
    for c in [0x80, 0xa0, 0xc3, 0xff]:
        b.add("field-values", f"obs-text {c:#04x}", lambda t, c=c: request(t, headers=[(b"Host", b"a.test"), (b"X-A", b"a" + bytes([c]) + b"b")]))
    for host_byte in [0x01, 0x7f, 0x09]:
        b.add("field-values", f"byte {host_byte:#04x} in Host", lambda t, c=host_byte: request(
            t, headers=[(b"Host", b"a" + bytes([c]) + b".test")]))


def request_line(b):
    lines = [
        (b"GET http://a.test/d HTTP/1.1", "absolute-form, same host"),
        (b"GET http://a.test HTTP/1.1", "absolute-form without a path"),
        (b"GET http://a.test?q=1 HTTP/1.1", "absolute-form with a query, no path"),
        (b"GET http://A.TEST/d HTTP/1.1", "absolute-form, host in upper case"),
        (b"GET HTTP://a.test/d HTTP/1.1", "absolute-form, scheme in upper case"),
        (b"GET https://a.test/d HTTP/1.1", "absolute-form, https"),
        (b"GET http://b.test/d HTTP/1.1", "absolute-form, another host"),
        (b"GET http://a.test:80/d HTTP/1.1", "absolute-form, host with a port Host lacks"),
        (b"GET http://u@a.test/d HTTP/1.1", "absolute-form with userinfo"),
        (b"GET http:/a.test/d HTTP/1.1", "absolute-form with one slash"),
        (b"GET ftp://a.test/d HTTP/1.1", "absolute-form, ftp"),
        (b"GET //a.test/d HTTP/1.1", "network-path reference"),
        (b"OPTIONS * HTTP/1.1", "asterisk-form"),
        (b"GET * HTTP/1.1", "asterisk-form with GET"),
        (b"OPTIONS */d HTTP/1.1", "asterisk and more"),
        (b"CONNECT a.test:443 HTTP/1.1", "authority-form, CONNECT"),
        (b"GET a.test:443 HTTP/1.1", "authority-form, GET"),
        (b"TRACE /d HTTP/1.1", "TRACE"),
        (b"GET d HTTP/1.1", "relative target"),
        (b"GET /d#frag HTTP/1.1", "fragment"),
        (b"GET /d?a=#b HTTP/1.1", "fragment after a query"),
        (b"GET /d%20e HTTP/1.1", "percent-encoded space"),
        (b"GET /d%zz HTTP/1.1", "bad percent-encoding"),
        (b"GET /d\"<>\\^`{|} HTTP/1.1", "unsafe ASCII in the target"),
        (b"GET /d\xc3\xa9 HTTP/1.1", "non-ASCII in the target"),
        (b"GET /d e HTTP/1.1", "space in the target"),
        (b"GET /d\te HTTP/1.1", "tab in the target"),
        (b"GET  /d HTTP/1.1", "two spaces after the method"),
        (b"GET /d  HTTP/1.1", "two spaces before the version"),
        (b"GET\t/d HTTP/1.1", "tab after the method"),
        (b"GET /d\tHTTP/1.1", "tab before the version"),
        (b"GET /d HTTP/1.1 ", "space after the version"),
        (b"GET /d HTTP/1.1\t", "tab after the version"),
        (b" GET /d HTTP/1.1", "space before the method"),
        (b"GET /d", "no version"),
        (b"GET /d ", "no version, trailing space"),
        (b"GET HTTP/1.1", "no target"),
        (b"GET  HTTP/1.1", "empty target"),
        (b"/d HTTP/1.1", "no method"),
        (b"GET /d HTTP/1.0", "HTTP/1.0"),
        (b"GET /d HTTP/1.2", "HTTP/1.2"),
        (b"GET /d HTTP/1.9", "HTTP/1.9"),
        (b"GET /d HTTP/2.0", "HTTP/2.0"),
        (b"GET /d HTTP/0.9", "HTTP/0.9"),
        (b"GET /d HTTP/3.1", "HTTP/3.1"),
        (b"GET /d HTTP/9.9", "HTTP/9.9"),
        (b"GET /d http/1.1", "lower-case version"),
        (b"GET /d Http/1.1", "mixed-case version"),
        (b"GET /d HTTP/1", "version without minor"),
        (b"GET /d HTTP/1.", "version with a dot only"),
        (b"GET /d HTTP/11", "version without a dot"),
        (b"GET /d HTTP/1.10", "two-digit minor"),
        (b"GET /d HTTP/01.1", "two-digit major"),
        (b"GET /d HTTP/1.1.1", "three-part version"),
        (b"GET /d HTTP/ 1.1", "space in the version"),
        (b"GET /d HTTX/1.1", "HTTX"),
        (b"GET /d HTTP/1,1", "comma for the dot"),
        (b"GET /d ICE/1.0", "another protocol"),
        (b"get /d HTTP/1.1", "lower-case method"),
        (b"Get /d HTTP/1.1", "mixed-case method"),
        (b"FOO /d HTTP/1.1", "unknown method"),
        (b"PURGE /d HTTP/1.1", "PURGE"),
        (b"G(T /d HTTP/1.1", "non-token method"),
        (b"GET: /d HTTP/1.1", "colon in the method"),
        (b"GE T /d HTTP/1.1", "space in the method"),
    ]
    methods = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"M-SEARCH", b"REPORT", b"MKCOL",
               b"PROPFIND", b"LOCK", b"UNLOCK", b"COPY", b"MOVE", b"LINK", b"SEARCH", b"SOURCE"]
    for line, note in lines:
        b.add("request-line", note, lambda t, line=line: request(t, line=line.replace(b"/d", t, 1) if b"*" not in line else line))
    for m in methods:
        b.add("request-line", f"method {m.decode()}", lambda t, m=m: request(t, method=m))
    # HTTP/1.0 with and without Host, keep-alive.
    b.add("request-line", "HTTP/1.0 without Host", lambda t: request(t, version=b"HTTP/1.0", headers=[]))
    b.add("request-line", "HTTP/1.0 keep-alive", lambda t: request(t, version=b"HTTP/1.0", headers=[(b"Host", b"a.test"), (b"Connection", b"keep-alive")]))
    b.add("request-line", "HTTP/1.0 with a body", lambda t: request(
        t, method=b"POST", version=b"HTTP/1.0", headers=[(b"Host", b"a.test"), (b"Content-Length", b"3")], body=b"abc"))
    b.add("request-line", "HTTP/1.2 without Host", lambda t: request(t, version=b"HTTP/1.2", headers=[]))


def host(b):
    cases = [
        ([], "missing"),
        ([(b"Host", b"a.test"), (b"Host", b"a.test")], "twice, equal"),
        ([(b"Host", b"a.test"), (b"Host", b"b.test")], "twice, different"),
        ([(b"Host", b"a.test"), (b"host", b"a.test")], "twice, case"),
        ([(b"Host", b"")], "empty"),
        ([(b"Host", b"a.test:8080")], "with a port"),
        ([(b"Host", b"a.test:")], "empty port"),
        ([(b"Host", b"a.test:x")], "non-numeric port"),
        ([(b"Host", b"u@a.test")], "userinfo"),
        ([(b"Host", b"a.test/x")], "with a path"),
        ([(b"Host", b"a.test?x")], "with a query"),
        ([(b"Host", b"a.test#x")], "with a fragment"),
        ([(b"Host", b"a test")], "with a space"),
        ([(b"Host", b"a.test, b.test")], "a list"),
        ([(b"Host", b"[::1]")], "IPv6 literal"),
        ([(b"Host", b"[::1]:80")], "IPv6 literal with a port"),
        ([(b"Host", b"192.0.2.1")], "IPv4"),
        ([(b"Host", b"a_b.test")], "underscore"),
        ([(b"Host", b"xn--bcher-kva.test")], "punycode"),
        ([(b"Host", b"b\xc3\xbccher.test")], "non-ASCII"),
        ([(b"Host", b"a.test\"")], "a quote"),
        ([(b"Host", b"a.test\\b")], "a backslash"),
        ([(b"HOST", b"a.test")], "name in upper case"),
        ([b"Host:a.test"], "no space after the colon"),
        ([(b"X-A", b"b"), (b"Host", b"a.test")], "after another field"),
    ]
    for fields, note in cases:
        b.add("host", note, lambda t, f=fields: request(t, headers=f))
        b.add("host", note + " (HTTP/1.0)", lambda t, f=fields: request(t, version=b"HTTP/1.0", headers=f))


def chunks(b):
    rng = b.rng
    te = [(b"Host", b"a.test"), (b"Transfer-Encoding", b"chunked")]

    def post(body):
        return lambda t: request(t, method=b"POST", headers=te, body=body)

    sizes = [
        (b"5", "plain"), (b"05", "leading zero"), (b"00000005", "8 digits"), (b"000000000000005", "15 digits"),
        (b"0000000000000005", "16 digits"), (b"00000000000000000005", "20 digits"),
        (b"000000000000000000000000000005", "30 digits"),
        (b"0x5", "0x prefix"), (b"0X5", "0X prefix"), (b"+5", "plus sign"), (b"-5", "negative"), (b" 5", "leading space"),
        (b"5 ", "trailing space"), (b"5\t", "trailing tab"), (b"\t5", "leading tab"), (b"", "empty size"),
        (b"g", "not hex"), (b"5g", "hex then junk"), (b"5.0", "decimal point"), (b"5_", "underscore"),
        (b"ffffffffffffffffffff", "20 hex digits"), (b"ffffffffffffffff", "2^64 - 1"), (b"10000000000000000", "2^64"),
        (b"7fffffffffffffff", "2^63 - 1"), (b"fffffffff", "36 bits"),
        (b"\xd9\xa5", "non-ASCII"), (b"5\x00", "NUL after the size"), (b"5\r", "bare CR after the size"),
    ]
    for s, note in sizes:
        b.add("chunk-size", note, post(s + b"\r\nhello\r\n0\r\n\r\n"))
    for k in range(1, 17):
        data = b.body(k, k)
        hexsize = (b"%x" % k) if rng.random() < 0.5 else (b"%X" % k)
        b.add("chunk-size", f"size {hexsize.decode()}", post(hexsize + b"\r\n" + data + b"\r\n0\r\n\r\n"))
    for last in [b"0", b"00", b"000", b"0000000000000000", b"0x0", b"-0", b"+0", b"0 ", b" 0"]:
        b.add("chunk-size", f"last chunk {last!r}", post(b"5\r\nhello\r\n" + last + b"\r\n\r\n"))
    exts = [
        (b";a", "name"), (b";a=b", "name=token"), (b";a=\"b\"", "quoted value"), (b";a=\"b;c\"", "quoted ;"),
        (b";a=\"b\\\"c\"", "quoted escape"), (b";a=\"b", "unterminated quote"), (b";a=\"\"", "empty quoted"),
        (b";a;b=c", "two"), (b";", "empty"), (b";=", "no name"), (b";a=", "no value"), (b";a b", "space inside"),
        (b" ;a", "BWS before ;"), (b"; a", "BWS after ;"), (b";a = b", "BWS around ="), (b";a=b ", "trailing space"),
        (b";a=\"b\r\nc\"", "CRLF in a quoted value"), (b";a\x00", "NUL"), (b";a\x01", "control byte"),
        (b";a=\"\x7f\"", "DEL in a quoted value"), (b";a=\xff", "obs-text"), (b";" + b"a" * 300, "long"),
        (b";a\nb", "bare LF inside"), (b";a\rb", "bare CR inside"), (b";a(b)", "non-token name"),
    ]
    for e, note in exts:
        b.add("chunk-ext", note, post(b"5" + e + b"\r\nhello\r\n0\r\n\r\n"))
    for e, note in exts[:6]:
        b.add("chunk-ext", note + " on the last chunk", post(b"5\r\nhello\r\n0" + e + b"\r\n\r\n"))
    framing = [
        (b"5\nhello\r\n0\r\n\r\n", "bare LF after the size"),
        (b"5\r\nhello\n0\r\n\r\n", "bare LF after the data"),
        (b"5\r\nhello\r\n0\n\r\n", "bare LF after the last chunk"),
        (b"5\r\nhello\r\n0\r\n\n", "bare LF ending the trailers"),
        (b"5\nhello\n0\n\n", "bare LF everywhere"),
        (b"5\r\nhello0\r\n\r\n", "no CRLF after the data"),
        (b"5\r\nhelloXY0\r\n\r\n", "two other bytes after the data"),
        (b"5\r\nhello\r0\r\n\r\n", "CR only after the data"),
        (b"5\r\nhelloworld\r\n0\r\n\r\n", "data longer than the size"),
        (b"5\r\nhel\r\n0\r\n\r\n", "data shorter than the size"),
        (b"5\r\nhello\r\n0\r\n", "no empty line after the last chunk"),
        (b"5\r\nhello\r\n", "no last chunk"),
        (b"5\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a.test\r\n\r\n", "a request after the body"),
        (b"\r\n5\r\nhello\r\n0\r\n\r\n", "empty line before the first chunk"),
        (b"5\r\n\r\nhello\r\n0\r\n\r\n", "empty line after the size"),
        (b"0\r\n\r\n", "empty body"),
        (b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", "two chunks"),
        (b"5\r\nhello\r\n\r\n0\r\n\r\n", "extra CRLF between chunks"),
    ]
    for body, note in framing:
        b.add("chunk-framing", note, post(body))
    trailers = [
        ([b"X-T: v"], "one field"), ([b"X-T: v", b"X-U: w"], "two fields"), ([b"X-T:"], "empty value"),
        ([b"X-T v"], "no colon"), ([b"X-T : v"], "space before the colon"), ([b": v"], "empty name"),
        ([b"X T: v"], "space in the name"), ([b"X-T: v", b" folded"], "obs-fold"), ([b"X-T: a\x01b"], "control byte"),
        ([b"X-T: a\rb"], "bare CR"), ([b"Content-Length: 5"], "Content-Length"), ([b"Transfer-Encoding: chunked"], "Transfer-Encoding"),
        ([b"Host: b.test"], "Host"), ([b"X-T: \x80"], "obs-text"), ([b"X-T: a\x7fb"], "DEL"),
    ]
    for tr, note in trailers:
        b.add("chunk-trailers", note, post(chunked(b"hello", trailers=tr)))
    # Chunking of random bodies with random extensions and case.
    good_exts = [b"", b";a", b";a=b", b";a=\"q d\"", b";x=1;y=2"]
    for i in range(30):
        data = b.body(1, 80)
        e = rng.choice(good_exts)
        b.add("chunk-size", f"random chunking, ext {e!r}", post(chunked(data, rng=rng, ext=e, upper=rng.random() < 0.5)))


def expect_and_connection(b):
    for v in [b"100-continue", b"100-Continue", b"100-CONTINUE", b" 100-continue ", b"200-ok", b"", b"100-continue, foo",
              b"foo"]:
        b.add("expect", f"Expect {v!r}", lambda t, v=v: request(
            t, method=b"POST", headers=[(b"Host", b"a.test"), (b"Expect", v), (b"Content-Length", b"3")], body=b"abc"))
    for v in [b"close", b"keep-alive", b"Close", b"close, X-A", b"X-A", b"", b",", b"upgrade", b"Host"]:
        b.add("connection", f"Connection {v!r}", lambda t, v=v: request(
            t, headers=[(b"Host", b"a.test"), (b"Connection", v), (b"X-A", b"b"), (b"X-B", b"c")]))
    b.add("connection", "Upgrade: h2c", lambda t: request(
        t, headers=[(b"Host", b"a.test"), (b"Connection", b"Upgrade, HTTP2-Settings"), (b"Upgrade", b"h2c"), (b"HTTP2-Settings", b"AAMAAABkAAQAAP__")]))
    b.add("connection", "Proxy-Connection", lambda t: request(t, headers=[(b"Host", b"a.test"), (b"Proxy-Connection", b"keep-alive")]))
    b.add("connection", "X-Forwarded-* from the client", lambda t: request(
        t, headers=[(b"Host", b"a.test"), (b"X-Forwarded-For", b"192.0.2.1"), (b"X-Forwarded-For", b"192.0.2.2"),
                    (b"X-Forwarded-Host", b"evil.test"), (b"X-Forwarded-Proto", b"https")]))


MUTATION_BYTES = b" \t\r\n\x00:;,\x0b\x0c\x7f\x80\xff\"=-0aAzZ/#?@"


def mutants(b, count):
    rng = b.rng
    for i in range(count):
        with_body = rng.random() < 0.6
        fields = b.extras(rng.randint(0, 2))
        body = b""
        if with_body:
            body = b.body(0, 30)
            if rng.random() < 0.5:
                fields.append((b"Content-Length", b"%d" % len(body)))
            else:
                fields.append((b"Transfer-Encoding", b"chunked"))
                body = chunked(body, rng=rng)
        fields = b.shuffle_with_host(fields)
        m = b.method(with_body)
        ops = []

        def mutate(data, ops=ops):
            data = bytearray(data)
            for _ in range(rng.randint(1, 3)):
                op = rng.choice(["replace", "insert", "delete", "duplicate-line", "swap-case"])
                pos = rng.randrange(len(data))
                if op == "replace":
                    data[pos] = rng.choice(MUTATION_BYTES)
                elif op == "insert":
                    data[pos:pos] = bytes([rng.choice(MUTATION_BYTES)])
                elif op == "delete":
                    del data[pos]
                elif op == "duplicate-line":
                    start = data.rfind(b"\n", 0, pos) + 1
                    end = data.find(b"\n", pos)
                    if end < 0:
                        continue
                    data[start:start] = data[start:end + 1]
                else:
                    data[pos] = ord(chr(data[pos]).swapcase()) if data[pos] < 0x80 else data[pos]
                ops.append(f"{op}@{pos}")
            return bytes(data)

        def make(t, m=m, f=fields, body=body, mutate=mutate):
            return mutate(request(t, method=m, headers=f, body=body))

        b.add("mutant", "", make)
        b.cases[-1].note = " ".join(ops)


def generate(seed=9112, mutant_count=1200):
    b = Builder(seed)
    for family in (valid, content_length, transfer_encoding, obs_fold, line_endings, field_names, field_values,
                   request_line, host, chunks, expect_and_connection):
        family(b)
    mutants(b, mutant_count)
    return b.cases
