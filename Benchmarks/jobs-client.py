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
import sys
import threading
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
    host, port, target = split_url(args.url)
    count, connections = args.count, max(1, min(args.connections, args.count))
    headers = {"Content-Type": "application/json"}
    for h in args.header:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    ids = [None] * count
    other = []
    next_index = [0]
    lock = threading.Lock()
    failure = []

    def worker():
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            while True:
                with lock:
                    i = next_index[0]
                    if i >= count or failure:
                        return
                    next_index[0] += 1
                conn.request("POST", target, body=BODY, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                if resp.status == 202:
                    ids[i] = json.loads(payload)["job_id"]
                else:
                    with lock:
                        other.append(resp.status)
        except Exception as e:  # noqa: BLE001 - reported, then exit 1
            with lock:
                failure.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    if failure:
        die(f"submitting to {args.url}: {failure[0]}")
    accepted = [i for i in ids if i is not None]
    with open(args.ids_file, "w") as f:
        f.writelines(i + "\n" for i in accepted)
    print(f"submitted {count} accepted {len(accepted)} other {len(other)} seconds {seconds:.3f}")


def await_jobs(args):
    host, port, _ = split_url(args.base)
    with open(args.ids_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    deadline = time.monotonic() + args.timeout
    conn = http.client.HTTPConnection(host, port, timeout=60)
    states = {}
    first_created = last_completed = None
    for job in ids:
        while True:
            remaining = deadline - time.monotonic()
            wait = max(0, min(30, int(remaining)))
            try:
                conn.request("GET", f"{args.jobs_path}/{job}?wait={wait}")
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as e:
                die(f"polling job {job[:8]}: {type(e).__name__}: {e}")
            if resp.status != 200:
                die(f"job {job[:8]}: status {resp.status}: {payload[:200]!r}")
            status = json.loads(payload)
            if status["status"] not in ("queued", "running") or remaining <= 0:
                break
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
