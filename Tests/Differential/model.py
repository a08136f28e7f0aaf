# What coatcheck documents that it changes on the way upstream (README "What
# the proxy guarantees", SPEC §6), as a function of the request h11 parsed:
# the differential compares the backend's view with this, not with the
# client's bytes.

import re

# Removed both ways (SPEC §6), plus the framing fields coatcheck writes
# itself and Expect (answered by the proxy).
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
              b"upgrade", b"content-length", b"expect"}
# Set or appended by coatcheck; checked on their own.
FORWARDED = {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
PEER = b"127.0.0.1"


def tokens(value):
    return [t.strip(b" \t") for t in value.split(b",") if t.strip(b" \t")]


def nominated(fields):
    """Field names (lower case) a Connection field names."""
    out = set()
    for name, value in fields:
        if name.lower() == b"connection":
            out |= {t.lower() for t in tokens(value)}
    return out


def origin_form(target):
    """Absolute-form reduced to the path and query coatcheck forwards."""
    m = re.match(rb"(?i)https?://[^/?]*", target)
    if not m:
        return target
    rest = target[m.end():]
    return rest if rest.startswith(b"/") else b"/" + rest


def expected_upstream(h):
    names = nominated(h.fields) - {b"host"}
    fields = [(n, v) for n, v in h.fields
              if n.lower() not in HOP_BY_HOP and n.lower() not in FORWARDED and n.lower() not in names]
    return {"method": h.method, "target": origin_form(h.target), "fields": fields}


def forwarded_fields(c, h):
    """The backend's fields less those coatcheck sets, and what is wrong
    with the ones it sets (X-Forwarded-*, version)."""
    problems = []
    if c.version != b"HTTP/1.1":
        problems.append(f"upstream version {c.version!r}")
    got = {}
    rest = []
    for n, v in c.fields:
        ln = n.lower()
        if ln in FORWARDED:
            got.setdefault(ln, []).append(v)
        elif ln in (b"content-length", b"transfer-encoding"):
            continue
        else:
            rest.append((n, v))
    client_xff = [v for n, v in h.fields if n.lower() == b"x-forwarded-for" and v]
    want_xff = b", ".join(client_xff + [PEER])
    if got.get(b"x-forwarded-for") != [want_xff]:
        problems.append(f"X-Forwarded-For {got.get(b'x-forwarded-for')!r}, want {want_xff!r}")
    if got.get(b"x-forwarded-proto") != [b"http"]:
        problems.append(f"X-Forwarded-Proto {got.get(b'x-forwarded-proto')!r}")
    hosts = [v for n, v in h.fields if n.lower() == b"host"]
    want_host = hosts[:1]
    if got.get(b"x-forwarded-host", []) != want_host:
        problems.append(f"X-Forwarded-Host {got.get(b'x-forwarded-host')!r}, want {want_host!r}")
    return rest, problems
