# The disagreements between coatcheck and h11 that are known and right
# (Scripts/differential). Each rule names the direction it explains, the
# statuses coatcheck may answer, a test on the raw input (independent of how
# the corpus made it, so hand-written and mutated cases are classified the
# same way), and why coatcheck's answer is the right one, in the words of
# RFC 9110 (HTTP Semantics) and RFC 9112 (HTTP/1.1).
#
# Directions: "coatcheck-rejects" (h11 accepts, coatcheck refuses: h11 is
# lenient where the RFC lets or tells a recipient reject), and
# "coatcheck-accepts" (coatcheck takes what h11 refuses; each such rule also
# checks that coatcheck forwarded exactly what the RFC's reading gives).
# A disagreement no rule explains is a failure of Scripts/differential.

import re
from dataclasses import dataclass
from typing import Callable

TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
KNOWN_METHODS = {  # http_parser 2.9's table, which coatcheck's reader uses
    b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"TRACE", b"COPY", b"LOCK", b"MKCOL",
    b"MOVE", b"PROPFIND", b"PROPPATCH", b"SEARCH", b"UNLOCK", b"BIND", b"REBIND", b"UNBIND", b"ACL", b"REPORT",
    b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"M-SEARCH", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"PATCH", b"PURGE",
    b"MKCALENDAR", b"LINK", b"UNLINK", b"SOURCE",
}


class Message:
    """The raw input cut the lenient way (lines end at LF, a CR before it
    dropped), for the rules' tests only."""

    def __init__(self, data):
        self.data = data
        m = re.search(rb"\n\r?\n", data)
        head, self.body = (data[:m.start()], data[m.end():]) if m else (data, b"")
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in head.split(b"\n")]
        while lines and lines[0] == b"":
            lines.pop(0)
        self.request_line = lines[0] if lines else b""
        self.field_lines = lines[1:]
        parts = self.request_line.split(b" ")
        self.method = parts[0]
        self.target = parts[1] if len(parts) > 1 else b""
        self.version = parts[-1] if len(parts) > 2 else b""
        self.fields = []
        for ln in self.field_lines:
            name, colon, value = ln.partition(b":")
            if colon:
                self.fields.append((name.lower(), value.strip(b" \t")))

    def values(self, name):
        return [v for n, v in self.fields if n == name]

    def has(self, name):
        return any(n == name for n, _ in self.fields)

    def chunk_lines(self):
        """The lines of a chunked body (sizes, trailers), as far as they go."""
        out = []
        rest = self.body
        while rest:
            i = rest.find(b"\n")
            if i < 0:
                break
            ln = rest[:i + 1]
            out.append(ln)
            m = re.match(rb"([0-9a-fA-F]+)", ln)
            rest = rest[i + 1:]
            if m and not out[-1].startswith(b"0"):
                rest = rest[int(m.group(1), 16) + 2:] if len(m.group(1)) < 16 else b""
        return out


    def trailer_lines(self):
        """The lines after the last chunk, CR and LF dropped."""
        lines = self.chunk_lines()
        for i, ln in enumerate(lines):
            if re.match(rb"0+[^0-9a-fA-F]", ln):
                return [t.rstrip(b"\n").rstrip(b"\r") for t in lines[i + 1:]]
        return []


@dataclass
class Rule:
    name: str
    direction: str
    statuses: set
    matches: Callable
    why: str


def valid_authority(v):
    return re.fullmatch(rb"[A-Za-z0-9\-._~!$&'()*+,;=%:\[\]]+", v) is not None


def target_refused(m):
    t = m.target
    if b"#" in t:
        return True
    if t.startswith(b"/"):
        return False
    if t == b"*":
        return m.method != b"OPTIONS"
    a = re.match(rb"(?i)https?://([^/?]*)", t)
    if not a:
        return True
    hosts = m.values(b"host")
    return not hosts or a.group(1).lower() != hosts[0].lower()


def ctl_in_field(m):
    return any(re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", ln) for ln in m.field_lines + m.trailer_lines())


def obs_fold(m):
    return any(ln[:1] in (b" ", b"\t") for ln in m.field_lines + m.trailer_lines())


def digits_beyond(m, limit_cl=18, limit_chunk=15):
    if any(re.fullmatch(rb"\d+", v) and len(v) > limit_cl for v in m.values(b"content-length")):
        return True
    return any(len(re.match(rb"[0-9a-fA-F]*", ln).group(0)) > limit_chunk for ln in m.chunk_lines())


RULES = [
    Rule("content-length-with-transfer-encoding", "coatcheck-rejects", {400},
         lambda m: m.has(b"content-length") and m.has(b"transfer-encoding"),
         'RFC 9112 §6.1: "A server MAY reject a request that contains both Content-Length and '
         'Transfer-Encoding or process such a request in accordance with the Transfer-Encoding alone." '
         '§6.3: such a message "ought to be handled as an error". h11 takes the Transfer-Encoding.'),
    Rule("transfer-encoding-on-http/1.0", "coatcheck-rejects", {400},
         lambda m: m.has(b"transfer-encoding") and m.version == b"HTTP/1.0",
         'RFC 9112 §6.1: "A server or client that receives an HTTP/1.0 message containing a '
         'Transfer-Encoding header field MUST treat the message as if the framing is faulty, even if a '
         'Content-Length is present". h11 decodes the chunks.'),
    Rule("content-length-repeated-or-list", "coatcheck-rejects", {400},
         lambda m: len(m.values(b"content-length")) > 1 or any(b"," in v for v in m.values(b"content-length")),
         'RFC 9110 §8.6: for "Content-Length: 42, 42" (or repeated fields with one value) "the recipient '
         'MUST either reject the message as invalid or replace that invalid field value with a single '
         'instance of the decimal value". coatcheck rejects; h11 replaces.'),
    Rule("number-longer-than-coatcheck-writes", "coatcheck-rejects", {400},
         lambda m: digits_beyond(m),
         'A Content-Length of more than 18 digits or a chunk size of more than 15 hex digits, leading zeros '
         'included. RFC 9110 §2.3: "At a minimum, a recipient MUST be able to parse and process protocol '
         'element lengths that are at least as long as the values that it generates for those same protocol '
         'elements in other messages" (coatcheck writes at most 8 MiB bodies: 7 digits) and §8.6 / RFC 9112 '
         '§7.1: a recipient "MUST anticipate potentially large" numerals "and prevent parsing errors due to '
         'integer conversion overflows"; a fixed digit count is how coatcheck does that. h11 takes 20 digits.'),
    Rule("obs-fold", "coatcheck-rejects", {400},
         obs_fold,
         'A field line (or trailer line) that starts with SP or HTAB. RFC 9112 §5.2: "A server that receives '
         'an obs-fold in a request message that is not within a "message/http" container MUST either reject '
         'the message by sending a 400 (Bad Request) ... or replace each received obs-fold with one or more SP '
         'octets". coatcheck rejects; h11 unfolds (and so reads " Content-Length: 5" as part of the field '
         'before it).'),
    Rule("control-character-in-a-field", "coatcheck-rejects", {400},
         ctl_in_field,
         'In a field or trailer field. RFC 9110 §5.5: field-vchar is VCHAR / obs-text; "Field values containing other CTL characters '
         'are also invalid; however, recipients MAY retain such characters for the sake of robustness when '
         'they appear within a safe context". A proxy forwarding to an unknown parser is no safe context. h11 '
         'admits CTLs other than NUL, CR, LF, VT, FF.'),
    Rule("host-missing-outside-http/1.1", "coatcheck-rejects", {400},
         lambda m: not m.has(b"host") and m.version != b"HTTP/1.1",
         'SPEC §6 requires Host on every request, HTTP/1.0 included: coatcheck routes and forwards by it. '
         'RFC 9110 §7.2: "A user agent MUST generate a Host header field in a request unless it sends that '
         'information as an ":authority" pseudo-header field." h11 requires Host only for HTTP/1.1.'),
    Rule("host-invalid", "coatcheck-rejects", {400},
         lambda m: any(not valid_authority(v) for v in m.values(b"host")),
         'RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1 '
         'request message that lacks a Host header field and to any request message that contains more than '
         'one Host header field line or a Host header field with an invalid field value." Host = uri-host '
         '[ ":" port ] (RFC 9110 §7.2): no userinfo, path, query, space or list; an empty one names an "http" '
         'URI with an empty host, which RFC 9110 §4.2.1 says a recipient "MUST reject ... as invalid". h11 does '
         'not look at the value.'),
    Rule("request-target-form", "coatcheck-rejects", {400, 405},
         target_refused,
         'RFC 9112 §3.2: the target is origin-form (absolute-path [ "?" query ]: no fragment), absolute-form, '
         'authority-form ("only used for CONNECT requests", §3.2.3) or asterisk-form ("only used for a '
         'server-wide OPTIONS request", §3.2.4); §3: "Recipients of an invalid request-line SHOULD respond '
         'with either a 400 (Bad Request) error or a 301 (Moved Permanently) redirect". Absolute-form naming '
         'another authority than Host is refused too: coatcheck is a reverse proxy, not a forward one, and '
         'RFC 9110 §7.4 lets a server refuse a target it will not serve; userinfo in an http(s) target is '
         '"an error" to a recipient (RFC 9110 §4.2.4). h11 takes any run of VCHAR.'),
    Rule("method-refused", "coatcheck-rejects", {405},
         lambda m: m.method in (b"CONNECT", b"TRACE"),
         'RFC 9110 §9.3.6: CONNECT asks a proxy for a tunnel, which a reverse proxy does not give; §9.3.8: '
         'TRACE reflects the request, credentials included. RFC 9110 §15.5.6: 405 says "the method received '
         'in the request-line is known by the origin server but not supported by the target resource."'),
    Rule("method-unknown", "coatcheck-rejects", {501},
         lambda m: m.method not in KNOWN_METHODS,
         'The reader knows the methods of its http_parser table; others (and "get": RFC 9110 §9.1 "The method '
         'token is case-sensitive") are answered 501, as RFC 9110 §9.1 asks: "An origin server that receives a '
         'request method that is unrecognized or not implemented SHOULD respond with the 501 (Not Implemented) '
         'status code." h11 takes any token.'),
    Rule("http-version-not-1.x", "coatcheck-rejects", {505},
         lambda m: re.fullmatch(rb"HTTP/[02-9]\.\d", m.version) is not None,
         'RFC 9110 §15.6.6: "The 505 (HTTP Version Not Supported) status code indicates that the server does '
         'not support, or refuses to support, the major version of HTTP that was used in the request message." '
         'h11 takes any HTTP/d.d.'),
    Rule("expectation-other-than-100-continue", "coatcheck-rejects", {417},
         lambda m: any(t.strip(b" \t").lower() != b"100-continue" for v in m.values(b"expect") for t in v.split(b",")
                       if t.strip(b" \t")),
         'RFC 9110 §10.1.1: "A server that receives an Expect field value containing a member other than '
         '100-continue MAY respond with a 417 (Expectation Failed) status code to indicate that the unexpected '
         'expectation cannot be met." h11 ignores it.'),
    Rule("whitespace-after-chunk-size", "coatcheck-rejects", {400},
         lambda m: any(re.match(rb"[0-9a-fA-F]+[ \t]+\r?\n", ln) for ln in m.chunk_lines()),
         'RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF, chunk-size = 1*HEXDIG: no whitespace before '
         'the CRLF (BWS is only allowed before a ";" of an extension, §7.1.1). h11 admits OWS there (its own '
         'source says the specification does not).'),
    Rule("chunk-extension-bytes", "coatcheck-rejects", {400},
         lambda m: any(re.match(rb"[0-9a-fA-F]+;.*[\x00-\x08\x0a-\x1f\x7f]", ln.rstrip(b"\n").rstrip(b"\r"))
                       or re.match(rb"[0-9a-fA-F]+;[^\n]*\r[^\n]", ln) for ln in m.chunk_lines()),
         'RFC 9112 §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ), names '
         'are tokens and values tokens or quoted-strings, so no CTL; §2.2: a recipient of a bare CR "MUST '
         'consider that element to be invalid or replace each bare CR with SP". h11 takes any bytes after ";".'),
    Rule("bare-lf-in-chunked-framing", "coatcheck-rejects", {400},
         lambda m: any(ln.endswith(b"\n") and not ln.endswith(b"\r\n") for ln in m.chunk_lines()),
         'RFC 9112 §7.1: every chunk line and the end of the trailer section is CRLF; §2.2: "a recipient MAY '
         'recognize a single LF as a line terminator" (MAY: either answer is conformant). coatcheck takes bare '
         'LF in the head, never in chunked framing; h11 takes it only at the end of the trailers.'),
    Rule("empty-line-before-the-request-line", "coatcheck-accepts", {None},
         lambda m: re.match(rb"(\r?\n)+[^\r\n]", m.data) is not None,
         'RFC 9112 §2.2: "a server that is expecting to receive and parse a request-line SHOULD ignore at '
         'least one empty line (CRLF) received prior to the request-line." h11 refuses it. Explained only when '
         'what coatcheck forwarded is what h11 reads from the same input without those lines.'),
]


def explain(data, kind, h, c, h11_parse, compare):
    """The rule that explains this disagreement, or None."""
    m = Message(data)
    for rule in RULES:
        if rule.direction != kind or not rule.matches(m):
            continue
        if kind == "coatcheck-rejects" and c.status not in rule.statuses:
            continue
        if kind == "coatcheck-accepts":
            stripped = re.sub(rb"^(\r?\n)+", b"", data)
            h2 = h11_parse(stripped)
            if not h2.ok or compare(None, h2, c):
                continue
        return rule
    return None
