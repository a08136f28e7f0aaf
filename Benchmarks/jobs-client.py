#!/usr/bin/env python3
"""Benchmarks/jobs-client.py: create jobs and wait for them (stdlib only).

  jobs-client.py submit URL COUNT IDS_FILE [--connections N] [--header 'NAME: VALUE']...
      POSTs COUNT jobs to URL over N keep-alive connections (default 16),
      writes the job ids to IDS_FILE in submission order and prints one line:
      "submitted N accepted N other N seconds S"  (other: non-202 answers)

  jobs-client.py await BASE IDS_FILE [--timeout S] [--jobs-path /jobs]
      Long-polls BASE/jobs/{id}?wait=30 for every id in turn until each is
      terminal (or S seconds pass, default 120) and prints one line:
      "completed N failed N canceled N pending N first_created_ms T
       last_completed_ms T"  (times from the jobs' status JSON)

  jobs-client.py steady URL --backlog N --rate R --seconds S [--timeout S]
      The estimate over a steady queue: POSTs N jobs at once, then R jobs a
      second for S seconds on one connection (so the queue stays about N
      long when R is the upstream's limit), keeping each 202's created_at
      and estimated_completion; then waits for every job and prints one line:
      "jobs N estimated N median_error E p90_error E" where a job's error is
      |estimated - completed_at| / (completed_at - created_at)

  jobs-client.py attempt BASE ID N [--timeout S] [--jobs-path /jobs]
      Polls BASE/jobs/{ID} every 5 ms until its `attempts` reaches N (the
      attempt has started) and prints one line: "attempt N at_ms T", T the
      wall-clock milliseconds when it was first seen

Exit status 0, or 1 with a message on stderr when the server cannot be
reached or answers something unexpected.
"""

import argparse
import http.client
import json
import selectors
import socket
import sys
import time
import urllib.parse
from datetime import datetime

BODY = b'{"report":"quarterly","format":"pdf"}'  # the same as jobs-post.lua


def die(message):
    print(f"jobs-client.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def split_url(url):
    u = urllib.parse.urlsplit(url)
    if u.scheme != "http" or not u.hostname:
        die(f"not an http:// URL: {url}")
    target = (u.path or "/") + (f"?{u.query}" if u.query else "")
    return u.hostname, u.port or 80, target


def epoch_ms(stamp):
    if stamp is None:
        return None
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def submit(args):
    """One request in flight per connection, driven by one selector: raw
    HTTP/1.1 on keep-alive sockets, so the client's own CPU stays small
    next to the server's (http.client in threads took about 170 us a job,
    half of a 2-core machine at 6,000 jobs/s)."""
    host, port, target = split_url(args.url)
    count, connections = args.count, max(1, min(args.connections, args.count))
    head = [f"POST {target} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    for h in args.header:
        name, _, value = h.partition(":")
        head.append(f"{name.strip()}: {value.strip()}")
    head.append(f"Content-Length: {len(BODY)}")
    request = ("\r\n".join(head) + "\r\n\r\n").encode() + BODY
    ids = [None] * count
    other = []
    selector = selectors.DefaultSelector()
    pending = {}  # socket -> [index of the job in flight, bytes read so far]
    next_index = 0

    def send_next(sock):
        nonlocal next_index
        pending[sock] = [next_index, b""]
        next_index += 1
        sock.sendall(request)

    def connect():
        sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        selector.register(sock, selectors.EVENT_READ)
        send_next(sock)

    def drop(sock):
        selector.unregister(sock)
        sock.close()
        del pending[sock]

    started = time.monotonic()
    try:
        for _ in range(connections):
            connect()
        while pending:
            for key, _ in selector.select(timeout=30) or die(f"submitting to {args.url}: no answer in 30 s"):
                sock = key.fileobj
                chunk = sock.recv(65536)
                if not chunk:
                    die(f"submitting to {args.url}: the server closed a connection")
                state = pending[sock]
                state[1] += chunk
                status, body, closing = parse_response(state[1])
                if status is None:
                    continue
                if status == 202:
                    ids[state[0]] = json.loads(body)["job_id"]
                else:
                    other.append(status)
                if closing or next_index >= count:
                    drop(sock)
                    if closing and next_index < count:
                        connect()
                else:
                    send_next(sock)
    except OSError as e:
        die(f"submitting to {args.url}: {type(e).__name__}: {e}")
    seconds = time.monotonic() - started
    accepted = [i for i in ids if i is not None]
    with open(args.ids_file, "w") as f:
        f.writelines(i + "\n" for i in accepted)
    print(f"submitted {count} accepted {len(accepted)} other {len(other)} seconds {seconds:.3f}")


def parse_response(data):
    """(status, body, whether the server closes after it) of the complete
    response in `data`, or Nones while it is incomplete; the server answers
    with Content-Length."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None, None, None
    head = data[:end].lower()
    at = head.find(b"\r\ncontent-length:")
    if at < 0:
        die(f"an answer without Content-Length: {data[:200]!r}")
    line_end = head.find(b"\r\n", at + 2)
    length = int(head[at + 17:line_end if line_end > 0 else end])
    if len(data) < end + 4 + length:
        return None, None, None
    return int(data[9:12]), data[end + 4:end + 4 + length], b"\r\nconnection: close" in head


class RawConnection:
    """One keep-alive HTTP/1.1 connection, one GET at a time, raw like
    `submit` (http.client took about 160 us of CPU a poll)."""

    def __init__(self, host, port, timeout=60):
        self.address, self.host, self.timeout, self.sock = (host, port), f"{host}:{port}", timeout, None

    def get(self, target):
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        data = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
            code, body, closing = parse_response(data)
            if code is not None:
                break
        if closing:
            self.close()
        return code, body

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def await_jobs(args):
    host, port, _ = split_url(args.base)
    with open(args.ids_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    deadline = time.monotonic() + args.timeout
    conn = RawConnection(host, port)

    def poll(job):
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0, min(30, int(remaining)))
            try:
                code, payload = conn.get(f"{args.jobs_path}/{job}?wait={wait}")
            except OSError as e:
                die(f"polling job {job[:8]}: {type(e).__name__}: {e}")
            if code != 200:
                die(f"job {job[:8]}: status {code}: {payload[:200]!r}")
            status = json.loads(payload)
            if status["status"] not in ("queued", "running") or remaining <= 0:
                return status

    # The last job first: the jobs run in about the order they came, so the
    # polls of the others find them done and stay out of the way of the
    # jobs being measured.
    if ids:
        poll(ids[-1])
    states = {}
    first_created = last_completed = None
    for job in ids:
        status = poll(job)
        state = status["status"]
        if state in ("queued", "running"):
            state = "pending"
        states[state] = states.get(state, 0) + 1
        created, completed = epoch_ms(status.get("created_at")), epoch_ms(status.get("completed_at"))
        if created is not None and (first_created is None or created < first_created):
            first_created = created
        if state == "completed" and (last_completed is None or completed > last_completed):
            last_completed = completed
    conn.close()
    print(
        f"completed {states.get('completed', 0)} failed {states.get('failed', 0)} "
        f"canceled {states.get('canceled', 0)} pending {states.get('pending', 0)} "
        f"first_created_ms {first_created or 0} last_completed_ms {last_completed or 0}"
    )


def post_job(conn, target):
    conn.request("POST", target, body=BODY, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = resp.read()
    if resp.status != 202:
        die(f"expected 202, got {resp.status}: {payload[:200]!r}")
    j = json.loads(payload)
    return j["job_id"], epoch_ms(j["created_at"]), epoch_ms(j.get("estimated_completion"))


def final_status(conn, jobs_path, job, deadline):
    while True:
        wait = max(0, min(30, int(deadline - time.monotonic())))
        conn.request("GET", f"{jobs_path}/{job}?wait={wait}")
        resp = conn.getresponse()
        status = json.loads(resp.read())
        if status["status"] not in ("queued", "running") or wait == 0:
            return status


def steady(args):
    host, port, target = split_url(args.url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    jobs = [post_job(conn, target) for _ in range(args.backlog)]
    interval = 1.0 / args.rate
    started = time.monotonic()
    for i in range(int(args.rate * args.seconds)):
        pause = started + i * interval - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        jobs.append(post_job(conn, target))
    deadline = time.monotonic() + args.timeout
    errors = []
    for job, created, estimate in jobs:
        status = final_status(conn, args.jobs_path, job, deadline)
        completed = epoch_ms(status.get("completed_at"))
        if status["status"] != "completed":
            die(f"job {job[:8]} ended {status['status']}")
        if estimate is not None and completed > created:
            errors.append(abs(estimate - completed) / (completed - created))
    conn.close()
    errors.sort()

    def quantile(q):
        return errors[min(len(errors) - 1, int(q * len(errors)))] if errors else float("nan")

    print(f"jobs {len(jobs)} estimated {len(errors)} median_error {quantile(0.5):.3f} p90_error {quantile(0.9):.3f}")


def attempt(args):
    host, port, _ = split_url(args.base)
    conn = http.client.HTTPConnection(host, port, timeout=10)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            conn.request("GET", f"{args.jobs_path}/{args.id}")
            resp = conn.getresponse()
            payload = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=10)
            time.sleep(0.005)
            continue
        if resp.status == 200 and json.loads(payload).get("attempts", 0) >= args.n:
            print(f"attempt {args.n} at_ms {int(time.time() * 1000)}")
            return
        time.sleep(0.005)
    die(f"job {args.id[:8]}: attempt {args.n} not seen within {args.timeout}s")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("submit")
    s.add_argument("url")
    s.add_argument("count", type=int)
    s.add_argument("ids_file")
    s.add_argument("--connections", type=int, default=16)
    s.add_argument("--header", action="append", default=[], help="NAME: VALUE, sent with every job")
    a = commands.add_parser("await")
    a.add_argument("base")
    a.add_argument("ids_file")
    a.add_argument("--timeout", type=float, default=120)
    a.add_argument("--jobs-path", default="/jobs")
    t = commands.add_parser("steady")
    t.add_argument("url")
    t.add_argument("--backlog", type=int, default=40)
    t.add_argument("--rate", type=float, default=80)
    t.add_argument("--seconds", type=float, default=5)
    t.add_argument("--timeout", type=float, default=120)
    t.add_argument("--jobs-path", default="/jobs")
    n = commands.add_parser("attempt")
    n.add_argument("base")
    n.add_argument("id")
    n.add_argument("n", type=int)
    n.add_argument("--timeout", type=float, default=120)
    n.add_argument("--jobs-path", default="/jobs")
    args = parser.parse_args()
    if args.command == "submit":
        submit(args)
    elif args.command == "steady":
        steady(args)
    elif args.command == "attempt":
        attempt(args)
    else:
        await_jobs(args)


if __name__ == "__main__":
    main()
