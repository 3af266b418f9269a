#!/usr/bin/env python3
"""A webhook receiver for trying Eddy's webhook sinks: prints each POST's JSON body with its
Idempotency-Key, and answers 204. A key it has seen before (a retry, or a row sent again
after a crash) is printed as a duplicate and not counted twice.

    python3 examples/webhook_receiver.py 9100
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

seen = set()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self.headers.get("Idempotency-Key", "")
        duplicate = key in seen
        seen.add(key)
        rows = json.loads(body)
        print(
            f"{'duplicate ' if duplicate else ''}alert {key[:8]} ({len(seen)} distinct): "
            f"{json.dumps(rows)}",
            flush=True,
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9100
    print(f"listening on http://127.0.0.1:{port}/", flush=True)
    HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
