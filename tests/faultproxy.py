"""A small HTTP/1.1 fault-injection proxy (stdlib asyncio) to put in front of a storage server.

Every request from the client is read in full, numbered (1, 2, ...), and either forwarded to the
upstream server or hit by a fault:

- ``drop_before``  close the client connection without forwarding (the write never lands)
- ``drop_after``   forward, then close without answering (the write lands, the client sees an
                   error: the ambiguous write)
- ``status_before`` answer ``status`` (503 by default) without forwarding
- ``status_after`` forward, then answer ``status`` instead of the real response
- ``truncate``     forward, then send only the first half of the response and close
- ``delay``        wait ``delay`` seconds, then forward

A fault fires on the ``nth`` request, on ``every`` k-th request, or on requests a predicate
selects, at most ``times`` times (None: always). Each forwarded request uses its own upstream
connection (``Connection: close``), and the proxy closes the client connection after each
response, so request framing stays simple: Content-Length or chunked bodies,
``Expect: 100-continue`` answered by the proxy.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

ACTIONS = ("drop_before", "drop_after", "status_before", "status_after", "truncate", "delay")


@dataclass
class Request:
    index: int
    method: str
    target: str
    headers: dict[str, str]
    body_size: int
    fault: Optional[str] = None
    status: Optional[int] = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""


@dataclass
class Fault:
    action: str
    nth: Optional[int] = None
    every: Optional[int] = None
    when: Optional[Callable[[Request], bool]] = None
    times: Optional[int] = 1
    status: int = 503
    delay: float = 0.0
    fired: int = 0

    def matches(self, req: Request) -> bool:
        if self.times is not None and self.fired >= self.times:
            return False
        if self.nth is not None and req.index != self.nth:
            return False
        if self.every is not None and req.index % self.every != 0:
            return False
        if self.when is not None and not self.when(req):
            return False
        return True


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._server: Optional[asyncio.base_events.Server] = None

    # -- control (from the test's thread) ---------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._handle, self.host, self.port), self._loop)
        self._server = fut.result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            await self._server.wait_closed()

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def add(
        self,
        action: str,
        *,
        nth: Optional[int] = None,
        every: Optional[int] = None,
        when: Optional[Callable[[Request], bool]] = None,
        times: Optional[int] = 1,
        status: int = 503,
        delay: float = 0.0,
    ) -> Fault:
        if action not in ACTIONS:
            raise ValueError(f"unknown fault {action!r}; one of {ACTIONS}")
        f = Fault(action, nth=nth, every=every, when=when, times=times, status=status, delay=delay)
        with self._lock:
            self.faults.append(f)
        return f

    def reset(self) -> None:
        """Forget faults and the request log; numbering starts again at 1."""
        with self._lock:
            self.faults.clear()
            self.requests.clear()
            self._count = 0

    @property
    def count(self) -> int:
        return self._count

    # -- the proxy ----------------------------------------------------------------------------
    def _pick(self, req: Request) -> Optional[Fault]:
        with self._lock:
            for f in self.faults:
                if f.matches(req):
                    f.fired += 1
                    req.fault = f.action
                    return f
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._serve_one(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers.append((k.strip(), v.strip()))
        low = {k.lower(): v for k, v in headers}
        if low.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body = await _read_body(reader, low)
        with self._lock:
            self._count += 1
            req = Request(self._count, method, target, low, len(body))
            self.requests.append(req)
        fault = self._pick(req)
        action = fault.action if fault else None
        if action == "drop_before":
            return
        if action == "status_before":
            writer.write(_status_response(fault.status))  # type: ignore[union-attr]
            await writer.drain()
            return
        if action == "delay":
            await asyncio.sleep(fault.delay)  # type: ignore[union-attr]
        out = [f"{method} {target} HTTP/1.1"]
        out += [f"{k}: {v}" for k, v in headers if k.lower() not in ("expect", "connection", "keep-alive")]
        out.append("Connection: close")
        up_r, up_w = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            up_w.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + body)
            await up_w.drain()
            response = await up_r.read()
        finally:
            up_w.close()
        try:
            req.status = int(response.split(b" ", 2)[1])
        except (IndexError, ValueError):
            req.status = None
        if action == "drop_after":
            return
        if action == "status_after":
            writer.write(_status_response(fault.status))  # type: ignore[union-attr]
        elif action == "truncate":
            writer.write(response[: max(1, len(response) // 2)])
        else:
            writer.write(response)
        await writer.drain()


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raw = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            raw += line
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while True:  # trailers, then an empty line
                    t = await reader.readuntil(b"\r\n")
                    raw += t
                    if t == b"\r\n":
                        return bytes(raw)
            raw += await reader.readexactly(size + 2)
    n = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(n) if n else b""


def _status_response(status: int) -> bytes:
    body = (f'{{"error": {{"code": {status}, "message": "injected fault"}}}}').encode()
    reason = {500: "Internal Server Error", 503: "Service Unavailable", 502: "Bad Gateway"}.get(status, "Error")
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n\r\n"
    ).encode() + body
