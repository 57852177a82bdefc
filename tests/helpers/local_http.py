"""A small HTTP(S) server on 127.0.0.1 standing in for a model host.

Routes (the path decides the behaviour, so one server serves every case):

* ``/files/<name>``: the bytes registered in ``server.files[name]``;
* ``/status/<code>/<name>``: always that status code;
* ``/flaky/<n>/<name>``: 503 for the first ``n`` requests of that path, then the file;
* ``/redirect/<url-quoted target>``: 302 to the target;
* ``/loop``: 302 to itself;
* ``/nolength/<name>``: the file without a Content-Length header (read to close);
* ``/shortlength/<name>``: announces fewer bytes than the file has;
* ``/longlength/<name>``: announces more bytes than it sends, then closes;
* ``/slow/<name>``: sleeps 3 s before answering.

``server.hits`` counts requests per path. HTTPS uses a throwaway CA from ``trustme``;
clients trust it through ``REQUESTS_CA_BUNDLE`` (``server.ca_path``).
"""

from __future__ import annotations

import collections
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote


@dataclass
class LocalServer:
    base: str
    httpd: ThreadingHTTPServer
    files: dict[str, bytes] = field(default_factory=dict)
    hits: collections.Counter[str] = field(default_factory=collections.Counter)
    ca_path: Path | None = None

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            return None

        def _send(
            self, code: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(code)
            hdrs = {"Content-Length": str(len(body)), **(headers or {})}
            for k, v in hdrs.items():
                if v is not None:
                    self.send_header(k, v)
            self.end_headers()
            if body:
                self.wfile.write(body)

        def do_GET(self) -> None:
            server.hits[self.path] += 1
            parts = self.path.lstrip("/").split("/", 1)
            kind, rest = parts[0], parts[1] if len(parts) > 1 else ""
            if kind == "files":
                if rest in server.files:
                    self._send(200, server.files[rest])
                else:
                    self._send(404, b"not found")
            elif kind == "status":
                code, _, _name = rest.partition("/")
                self._send(int(code), b"status")
            elif kind == "flaky":
                n, _, name = rest.partition("/")
                if server.hits[self.path] <= int(n):
                    self._send(503, b"busy")
                else:
                    self._send(200, server.files[name])
            elif kind == "redirect":
                self._send(302, b"", {"Location": unquote(rest)})
            elif kind == "loop":
                self._send(302, b"", {"Location": "/loop"})
            elif kind == "nolength":
                self.send_response(200)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(server.files[rest])
                self.close_connection = True
            elif kind == "shortlength":
                body = server.files[rest]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) // 2))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = True
            elif kind == "longlength":
                body = server.files[rest]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) * 2))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
            elif kind == "slow":
                time.sleep(3)
                self._send(200, server.files[rest])
            else:
                self._send(404, b"no route")

    return Handler


def start(*, tls_dir: Path | None = None) -> LocalServer:
    """Start a server in a thread; with ``tls_dir`` it speaks https (trustme CA)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    httpd.daemon_threads = True
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]  # clients that hang up
    port = httpd.server_address[1]
    scheme = "http"
    ca_path = None
    if tls_dir is not None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        tls_dir.mkdir(parents=True, exist_ok=True)
        ca_path = tls_dir / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        scheme = "https"
    server = LocalServer(base=f"{scheme}://127.0.0.1:{port}", httpd=httpd, ca_path=ca_path)
    httpd.RequestHandlerClass = _handler(server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return server
