"""The served dashboard: a read-only HTTP server on 127.0.0.1 (standard library only).

Routes (GET only; every other method is 405):

- ``/``: the page, with the current snapshot inlined; it polls ``/api/snapshot?since=SIG``;
- ``/api/snapshot``: the snapshot as JSON, or ``{"unchanged": true}`` when the manifest listing
  still has signature ``since`` and the cached snapshot is younger than ``max_age`` seconds;
- ``/api/diff?a=ID&b=ID``: the comparison of two checkpoints (loads their tensors).

Snapshots are built under a lock, so many open tabs cost one build. The server opens no browser.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from .._errors import CkptstoreError
from ..store._retention import Retention
from ..store._store import Store
from ._collect import error_snapshot, signature, snapshot
from ._diff import diff
from ._page import render, to_json

log = logging.getLogger("ckptstore")

HOST = "127.0.0.1"


class Source:
    """Snapshots and diffs of one store, cached by manifest-listing signature."""

    def __init__(
        self,
        store: Store,
        *,
        backup: str | None = None,
        backup_options: Mapping[str, Any] | None = None,
        policy: Retention | None = None,
        max_age: float = 60.0,
    ) -> None:
        self.store = store
        self.backup = backup
        self.backup_options = backup_options
        self.policy = policy
        self.max_age = max_age
        self._lock = threading.Lock()
        self._cached: dict[str, Any] | None = None
        self._built = 0.0

    def snapshot(self, since: str | None = None) -> dict[str, Any]:
        with self._lock:
            sig = signature(self.store) if self.store.exists() else ""
            fresh = self._cached is not None and self._cached["signature"] == sig
            if fresh and time.monotonic() - self._built < self.max_age:
                if since == sig:
                    return {"unchanged": True, "signature": sig}
                assert self._cached is not None
                return self._cached
            self._cached = snapshot(
                self.store, backup=self.backup, backup_options=self.backup_options, policy=self.policy
            )
            self._built = time.monotonic()
            return self._cached

    def diff(self, a: str, b: str) -> dict[str, Any]:
        ia, ib = self.store.info(id=a), self.store.info(id=b)
        return diff(self.store, ia, ib).to_json()


def _handler(source: Source, refresh: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "ckptstore-dashboard"
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard: " + format, *args)

        def _send(self, status: int, body: str, ctype: str) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(data)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, to_json(value), "application/json; charset=utf-8")

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                if url.path in ("/", "/index.html"):
                    try:
                        snap = source.snapshot()
                    except (CkptstoreError, OSError) as e:  # show the page anyway; it retries
                        snap = error_snapshot(source.store.uri, e)
                    self._send(200, render(snap, mode="live", refresh=refresh), "text/html; charset=utf-8")
                elif url.path == "/api/snapshot":
                    self._json(200, source.snapshot(q.get("since")))
                elif url.path == "/api/diff":
                    if not q.get("a") or not q.get("b"):
                        self._json(400, {"error": "give two checkpoint ids: /api/diff?a=ID&b=ID"})
                    else:
                        self._json(200, source.diff(q["a"], q["b"]))
                elif url.path == "/favicon.ico":
                    self.send_response(204)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self._json(404, {"error": f"no page {url.path}"})
            except (CkptstoreError, OSError, ValueError, TypeError) as e:
                self._json(400 if url.path == "/api/diff" else 500, {"error": str(e)})
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _read_only(self) -> None:
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _read_only

    return Handler


class DashboardServer:
    """A running dashboard (``ckptstore.dashboard(uri)``): ``url``, ``close()``, ``wait()``.

    Serves from a daemon thread; a context manager. ``wait()`` blocks until Ctrl+C or ``close``."""

    def __init__(
        self, source: Source, *, port: int = 0, refresh: float = 5.0, on_close: Callable[[], None] | None = None
    ) -> None:
        self.source = source
        self._on_close = on_close
        self._httpd = ThreadingHTTPServer((HOST, port), _handler(source, refresh))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ckptstore-dashboard", daemon=True)
        self._thread.start()
        self._closed = threading.Event()

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def __repr__(self) -> str:
        return f"DashboardServer({self.source.store.uri!r} at {self.url})"

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until ``close()`` (True) or ``timeout`` seconds (False). Ctrl+C closes and returns."""
        try:
            return self._closed.wait(timeout)
        except KeyboardInterrupt:
            self.close()
            return True

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
        if self._on_close is not None:
            self._on_close()
