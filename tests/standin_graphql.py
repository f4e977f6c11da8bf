#!/usr/bin/env python3
"""A STAND-IN for Saleor's API, its dashboard and the Storefront — not Saleor.

The real images cannot be pulled on this machine, so tests/saleor_render.rs
runs this tiny HTTP server where the containers would listen, to prove what
HAProxy does in front of them: which frontend routes where, and that the
health checks ask `POST /graphql/` (API; with the playground off Saleor answers
GET with 405) or `GET /` with the expected Host.

usage: standin_graphql.py PORT NAME LOGFILE
Answers 200 on /graphql/ (API) or / (others), 404 elsewhere; logs each request
line and Host header to LOGFILE.
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, NAME, LOG = int(sys.argv[1]), sys.argv[2], sys.argv[3]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        with open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} host={self.headers.get('Host')}\n")
        wanted = "/graphql/" if NAME == "saleor-api" else "/"
        ok = self.path == wanted or (NAME != "saleor-api" and not self.path.startswith("/graphql/"))
        body = f"stand-in {NAME} (not Saleor): {self.path}\n".encode()
        self.send_response(200 if ok else 404)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.do_GET()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
