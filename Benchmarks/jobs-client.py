#!/usr/bin/env python3
"""Benchmarks/jobs-client.py: create jobs and wait for them (stdlib only).

  jobs-client.py submit URL COUNT IDS_FILE [--connections N]
      POSTs COUNT jobs to URL over N keep-alive connections (default 16),
      writes the job ids to IDS_FILE in submission order and prints one line:
      "submitted N accepted N other N seconds S"  (other: non-202 answers)

  jobs-client.py await BASE IDS_FILE [--timeout S] [--jobs-path /jobs]
      Long-polls BASE/jobs/{id}?wait=30 for every id in turn until each is
      terminal (or S seconds pass, default 120) and prints one line:
      "completed N failed N canceled N pending N first_created_ms T
       last_completed_ms T"  (times from the jobs' status JSON)

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
                conn.request("POST", target, body=BODY, headers={"Content-Type": "application/json"})
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    s = commands.add_parser("submit")
    s.add_argument("url")
    s.add_argument("count", type=int)
    s.add_argument("ids_file")
    s.add_argument("--connections", type=int, default=16)
    a = commands.add_parser("await")
    a.add_argument("base")
    a.add_argument("ids_file")
    a.add_argument("--timeout", type=float, default=120)
    a.add_argument("--jobs-path", default="/jobs")
    args = parser.parse_args()
    if args.command == "submit":
        submit(args)
    else:
        await_jobs(args)


if __name__ == "__main__":
    main()
