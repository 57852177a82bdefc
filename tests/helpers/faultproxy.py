"""A reverse proxy on 127.0.0.1 in front of a real MLflow server, for fault tests.

It forwards every request unchanged, as nginx would. A test arms it with a path
fragment and an action: when a request whose path contains the fragment arrives, the
proxy first runs the action (for example: SIGKILL the MLflow server, or hold the
request while the test interrupts the client), then forwards. When the upstream is
gone it answers 502 Bad Gateway, as a real reverse proxy does.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.trigger: tuple[str, str, Callable[[], None]] | None = (
            None  # (method, fragment, action)
        )
        self.seen: list[tuple[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                body = b""
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    body = self.rfile.read(length)
                proxy.seen.append((self.command, self.path))
                trig = proxy.trigger
                if trig and self.command == trig[0] and trig[1] in self.path:
                    proxy.trigger = None
                    trig[2]()
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    status, reason = resp.status, resp.reason
                    out_headers = [
                        (k, v)
                        for k, v in resp.getheaders()
                        if k.lower() not in HOP | {"content-length"}
                    ]
                    conn.close()
                except OSError:
                    status, reason, data, out_headers = 502, "Bad Gateway", b"bad gateway", []
                self.send_response(status, reason)
                for k, v in out_headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def arm(self, method: str, fragment: str, action: Callable[[], None]) -> None:
        self.trigger = (method, fragment, action)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
