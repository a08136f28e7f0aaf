#!/usr/bin/env python3
"""A webhook receiver for the tests: records each delivery and checks its
Standard Webhooks signatures with Python's own hmac, independently of the
proxy's code.

    webhook_receiver.py --secrets S1,S2 [--answers 500,503/2,200] [--port N]
                        [--tls CERT KEY]

Prints `listening on 127.0.0.1:PORT`, then one JSON line per request:
{"n": 1, "path": ..., "headers": {lower-case name: value}, "size": ...,
 "sha256": ..., "verified": [one bool per secret], "answered": status}.
`--answers` lists the statuses to answer in turn (the last one repeats);
`CODE/S` adds `Retry-After: S`. The default is 204.
"""
import argparse
import base64
import hashlib
import hmac
import http.server
import json
import ssl
import sys
import threading

parser = argparse.ArgumentParser()
parser.add_argument("--secrets", default="")
parser.add_argument("--answers", default="204")
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--tls", nargs=2)
args = parser.parse_args()

secrets = [s for s in args.secrets.split(",") if s]
answers = args.answers.split(",")
lock = threading.Lock()
count = 0


def key(secret):
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def verified(headers, body):
    signed = f"{headers.get('webhook-id', '')}.{headers.get('webhook-timestamp', '')}.".encode() + body
    given = headers.get("webhook-signature", "").split(" ")
    results = []
    for secret in secrets:
        expected = "v1," + base64.b64encode(hmac.new(key(secret), signed, hashlib.sha256).digest()).decode()
        results.append(any(hmac.compare_digest(expected, g) for g in given))
    return results


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        global count
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        with lock:
            count += 1
            n = count
            answer = answers[min(n - 1, len(answers) - 1)]
        status, _, retry_after = answer.partition("/")
        status = int(status)
        record = {
            "n": n, "path": self.path, "headers": headers, "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(), "verified": verified(headers, body), "answered": status,
        }
        # Recorded before it is answered: once the proxy has seen the answer,
        # the record is already in the pipe.
        with lock:  # one whole line per record, whatever the threads do
            sys.stdout.write(json.dumps(record, sort_keys=True) + "\n")
            sys.stdout.flush()
        self.send_response(status)
        if retry_after:
            self.send_header("Retry-After", retry_after)
        if 300 <= status < 400:
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()


server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
server.daemon_threads = True
if args.tls:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.tls[0], args.tls[1])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
