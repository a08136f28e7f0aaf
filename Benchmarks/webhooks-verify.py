#!/usr/bin/env python3
"""Benchmarks/webhooks-verify.py LOG IDS_FILE SECRET BODY

Checks a receiver's delivery log (nginx-receiver.conf.in's `delivery`
format) against the jobs submitted: every job delivered, each delivery's
Standard Webhooks signature verified over BODY (the backend's "ok"), its
webhook-id the job's id. Prints one line:
"jobs N delivered N verified N duplicates N first_ms T last_ms T"
and exits 1 if a job was not delivered or a signature does not verify.
"""
import base64
import hashlib
import hmac
import sys

log_path, ids_path, secret, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].encode()
key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
with open(ids_path) as f:
    ids = {line.strip() for line in f if line.strip()}
seen, verified, duplicates, bad = set(), 0, 0, []
first = last = None
with open(log_path) as f:
    for line in f:
        head, _, signature = line.rstrip("\n").partition(' "')
        msec, job, status, webhook_id, timestamp = head.split(" ")
        signature = signature.rstrip('"')
        mac = "v1," + base64.b64encode(hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body,
                                                hashlib.sha256).digest()).decode()
        if webhook_id == job and status == "completed" and any(hmac.compare_digest(mac, s) for s in signature.split(" ")):
            verified += 1
        else:
            bad.append(job)
        if job in seen:
            duplicates += 1
        seen.add(job)
        t = int(float(msec) * 1000)
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
missing = ids - seen
print(f"jobs {len(ids)} delivered {len(ids & seen)} verified {verified} duplicates {duplicates} "
      f"first_ms {first} last_ms {last}")
if missing or bad:
    print(f"webhooks-verify.py: {len(missing)} job(s) not delivered, {len(bad)} bad deliveries", file=sys.stderr)
    sys.exit(1)
