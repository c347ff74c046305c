#!/usr/bin/env python3
"""A stand-in for the service hookgate delivers to, for trying the examples.

Listens on 127.0.0.1 (port 9000 unless given), answers 200 to every request
and prints what arrived: method, path, the message id hookgate puts in
`webhook-id`, and the body.

    python3 examples/receiver.py [PORT]
"""

import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver(BaseHTTPRequestHandler):
    def handle_any(self):
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        print(f"{self.command} {self.path} webhook-id={self.headers.get('webhook-id')} {body}", flush=True)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_POST = do_PUT = do_GET = handle_any

    def log_message(self, *args):
        pass  # the line above says it all


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    print(f"receiving on http://127.0.0.1:{port}", flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Receiver).serve_forever()
