#!/usr/bin/env python3
"""A backend for the interim-response tests: /ws answers an Upgrade with a
101 that carries an X-RSession command, then echoes bytes until the client
closes; /hints sends a 103 Early Hints (with an X-RSession command) before
its 200. Keep-alive: several requests per connection."""
import socketserver
import sys


class Handler(socketserver.BaseRequestHandler):
    def read_head(self, buf):
        while b"\r\n\r\n" not in buf:
            chunk = self.request.recv(65536)
            if not chunk:
                return None, b""
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        return head.decode("latin-1"), rest

    def handle(self):
        buf = b""
        while True:
            head, buf = self.read_head(buf)
            if head is None:
                return
            path = head.split(" ")[1]
            if path.startswith("/ws"):
                self.request.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\n"
                    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                    b"X-RSession: set ws=1\r\n\r\n")
                if buf:
                    self.request.sendall(buf)
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    self.request.sendall(data)
            body = b"hinted\n"
            self.request.sendall(
                b"HTTP/1.1 103 Early Hints\r\n"
                b"Link: </style.css>; rel=preload\r\n"
                b"X-RSession: set hint=1\r\n\r\n")
            self.request.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                b"X-RSession: set final=1\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
