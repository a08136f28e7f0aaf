#!/usr/bin/env python3
"""A real TLS peer for the tests: HTTP/1.1 with keep-alive over Python's ssl.

    tls_server.py CERT KEY

Listens on 127.0.0.1, a free port, and prints `listening on 127.0.0.1:PORT`
once it accepts connections. Every answer carries `X-Connection` (the
connection's number, from 1) and `X-Server-Name` (the SNI name the client
sent, or `-`), so tests can see pooling and SNI.

    GET /bytes/N          N bytes of a repeating pattern
    POST/PUT any path     the request body, echoed
    anything else         200 "tls ok METHOD PATH"
"""
import http.server
import itertools
import ssl
import sys
import threading

connections = itertools.count(1)
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with lock:
            self.connection_number = next(connections)

    def log_message(self, *args):
        pass

    def answer(self, body, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Connection", str(self.connection_number))
        self.send_header("X-Server-Name", getattr(self.request, "sni_name", None) or "-")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/bytes/"):
            n = int(self.path[len("/bytes/"):])
            pattern = bytes(range(256))
            self.answer((pattern * (n // 256 + 1))[:n])
        else:
            self.answer(f"tls ok {self.command} {self.path}".encode())

    do_HEAD = do_DELETE = do_GET

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.answer(self.rfile.read(length))

    do_PUT = do_POST


def main():
    cert, key = sys.argv[1], sys.argv[2]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember_sni(sock, name, _context):
        sock.sni_name = name

    context.sni_callback = remember_sni
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(f"listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
