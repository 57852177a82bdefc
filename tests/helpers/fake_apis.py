"""Tiny stand-ins for the GitHub and GitLab REST APIs on 127.0.0.1 (tests only).

Only the endpoints ci-compress calls, with the real paths, methods, status codes,
pagination (GitHub ``Link`` headers, GitLab ``x-next-page``) and the read-only token
answer GitHub gives fork PRs (403 "Resource not accessible by integration").
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

READ_ONLY = "read-only-token"


@dataclass
class FakeState:
    comments: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # issue -> comments
    notes: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    page_size: int = 2  # small, so pagination is exercised
    next_id: int = 1000
    bot_login: str = "github-actions[bot]"
    gitlab_user_id: int = 42

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id


class _Handler(BaseHTTPRequestHandler):
    state: FakeState
    base: str

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        return dict(json.loads(self.rfile.read(n) or b"{}"))

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        self.state.requests.append((method, url.path))
        q = parse_qs(url.query)
        if url.path.startswith("/api/v4/"):
            return self._gitlab(method, url.path.removeprefix("/api/v4"), q)
        return self._github(method, url.path, q)

    # ------------------------------------------------------------ GitHub
    def _github(self, method: str, path: str, q: dict[str, list[str]]) -> None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return self._send(401, {"message": "Requires authentication"})
        token = auth.removeprefix("Bearer ")
        if path == "/user" and method == "GET":
            # installation tokens (GITHUB_TOKEN) cannot read /user
            return self._send(403, {"message": "Resource not accessible by integration"})
        m = re.fullmatch(r"/repos/[^/]+/[^/]+/issues/(\d+)/comments", path)
        if m:
            number = int(m.group(1))
            items = self.state.comments.setdefault(number, [])
            if method == "GET":
                per = min(int(q.get("per_page", ["30"])[0]), self.state.page_size)
                page = int(q.get("page", ["1"])[0])
                chunk = items[(page - 1) * per : page * per]
                headers = {}
                if page * per < len(items):
                    nxt = f"{self.base}{path}?per_page={per}&page={page + 1}"
                    headers["Link"] = f'<{nxt}>; rel="next"'
                return self._send(200, chunk, headers)
            if method == "POST":
                if token == READ_ONLY:
                    return self._send(403, {"message": "Resource not accessible by integration"})
                c = {
                    "id": self.state.new_id(),
                    "body": self._body()["body"],
                    "user": {"login": self.state.bot_login, "type": "Bot"},
                    "html_url": f"https://github.example/pull/{number}#c",
                }
                items.append(c)
                return self._send(201, c)
        m = re.fullmatch(r"/repos/[^/]+/[^/]+/issues/comments/(\d+)", path)
        if m and method == "PATCH":
            if token == READ_ONLY:
                return self._send(403, {"message": "Resource not accessible by integration"})
            cid = int(m.group(1))
            for items in self.state.comments.values():
                for c in items:
                    if c["id"] == cid:
                        c["body"] = self._body()["body"]
                        return self._send(200, c)
            return self._send(404, {"message": "Not Found"})
        return self._send(404, {"message": "Not Found"})

    # ------------------------------------------------------------ GitLab
    def _gitlab(self, method: str, path: str, q: dict[str, list[str]]) -> None:
        if not self.headers.get("PRIVATE-TOKEN"):
            return self._send(401, {"message": "401 Unauthorized"})
        if path == "/user" and method == "GET":
            return self._send(200, {"id": self.state.gitlab_user_id, "username": "project_1_bot"})
        m = re.fullmatch(r"/projects/([^/]+)/merge_requests/(\d+)/notes(?:/(\d+))?", path)
        if not m:
            return self._send(404, {"message": "404 Not Found"})
        key = (m.group(1), m.group(2))
        items = self.state.notes.setdefault(key, [])
        if method == "GET" and not m.group(3):
            per = min(int(q.get("per_page", ["20"])[0]), self.state.page_size)
            page = int(q.get("page", ["1"])[0])
            chunk = items[(page - 1) * per : page * per]
            nxt = str(page + 1) if page * per < len(items) else ""
            return self._send(200, chunk, {"x-next-page": nxt})
        if method == "POST" and not m.group(3):
            n = {
                "id": self.state.new_id(),
                "body": self._body()["body"],
                "author": {"id": self.state.gitlab_user_id},
                "system": False,
            }
            items.append(n)
            return self._send(201, n)
        if method == "PUT" and m.group(3):
            for n in items:
                if n["id"] == int(m.group(3)):
                    n["body"] = self._body()["body"]
                    return self._send(200, n)
            return self._send(404, {"message": "404 Not found"})
        return self._send(405, {"message": "405 Method Not Allowed"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_PUT(self) -> None:
        self._route("PUT")


@contextmanager
def fake_api() -> Iterator[tuple[str, FakeState]]:
    """Serve the fake API on 127.0.0.1:<free port>; yields (base URL, state)."""
    state = FakeState()
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    handler.base = base
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, state
    finally:
        server.shutdown()
        server.server_close()
