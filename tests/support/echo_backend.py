#!/usr/bin/env python3
"""A tiny application server for the proxy tests: it answers every GET with
the X-RSession-* request headers it received (as JSON) and keeps a visit
counter in the session through the X-RSession response header."""
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        seen = {k: v for k, v in self.headers.items()
                if k.lower().startswith("x-rsession") or k.lower() == "x-remote-user"}
        data = dict(urllib.parse.parse_qsl(self.headers.get("X-RSession-Data", ""), keep_blank_values=True))
        visits = int(data.get("visits", "0")) + 1
        body = json.dumps({"headers": seen, "data": data, "visits": visits}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-RSession", "set visits=%d" % visits)
        user = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query).get("user")
        if user:
            self.send_header("X-RSession", "set user=" + urllib.parse.quote(user[0]))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
