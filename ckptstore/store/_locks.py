"""Leases under ``locks/``: who may delete objects while others write (docs/format.md, "Locks").

Two kinds of lease, each a small JSON file ``locks/<kind>-<time ns>-<16 hex>.json``:

- ``save``: held by every save from before it builds its dedup index until its manifest is
  written. Many may exist at once.
- ``gc``: held by a sweep (deleting objects). A sweep starts only when no live ``save`` lease
  exists; a save that sees a live ``gc`` lease withdraws its own lease and waits.

Both sides *write their lease first, then list*: with read-after-write listing (local disks,
S3, GCS), at least one of two racing parties sees the other. A lease is refreshed by a
background thread every ``REFRESH_EVERY`` seconds; one not refreshed for ``STALE_AFTER``
seconds, or one whose process is gone (same host), is stale: it is ignored and removed. A
holder checks that its lease still exists before acting on it (``Lease.held``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .._errors import StorageError
from ..storage._backend import Backend

log = logging.getLogger("ckptstore")

LOCKS_DIR = "locks"
LOCK_KEY_RE = re.compile(r"^locks/(save|gc)-([0-9]{20})-([0-9a-f]{16})\.json$")
#: seconds between refreshes of a held lease
REFRESH_EVERY = 60.0
#: a lease not refreshed for this long is stale (its holder crashed or hangs)
STALE_AFTER = 600.0
#: seconds between looks while waiting for another party's lease to go
POLL = 0.2

_HOST = socket.gethostname()


@dataclass(frozen=True)
class LockInfo:
    key: str
    kind: str
    host: str | None
    pid: int | None
    refreshed: float
    """Latest of the time written in the lease and its modification time on storage."""

    def describe(self) -> str:
        who = f"{self.host or '?'} pid {self.pid if self.pid is not None else '?'}"
        return f"a {self.kind} by {who} ({self.key})"

    def stale(self, now: float, stale_after: float) -> bool:
        if now - self.refreshed > stale_after:
            return True
        return self.host == _HOST and self.pid is not None and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def read_locks(backend: Backend, kind: str | None = None) -> list[LockInfo]:
    """Every lease file under ``locks/`` (of ``kind``, when given; other names are ignored)."""
    out = []
    for key in backend.list(LOCKS_DIR):
        m = LOCK_KEY_RE.match(key)
        if m is None or (kind is not None and m.group(1) != kind):
            continue
        host: str | None = None
        pid: int | None = None
        stamp = int(m.group(2)) / 1e9
        try:
            doc = json.loads(backend.read(key))
            host = doc.get("host") if isinstance(doc.get("host"), str) else None
            pid = doc.get("pid") if isinstance(doc.get("pid"), int) else None
            if isinstance(doc.get("refreshed"), (int, float)):
                stamp = max(stamp, float(doc["refreshed"]))
        except FileNotFoundError:
            continue  # released while we listed
        except ValueError:
            pass  # unreadable: judged by its times only
        try:
            mt = backend.mtime(key)
        except FileNotFoundError:
            continue
        except OSError:
            mt = None
        if mt is not None:
            stamp = max(stamp, mt)
        out.append(LockInfo(key=key, kind=m.group(1), host=host, pid=pid, refreshed=stamp))
    return out


def live_locks(
    backend: Backend,
    kind: str,
    *,
    exclude: Iterable[str] = (),
    stale_after: float | None = None,
    remove_stale: bool = True,
) -> list[LockInfo]:
    """Live leases of ``kind``, not counting ``exclude`` (keys); stale ones are removed."""
    stale_after = STALE_AFTER if stale_after is None else stale_after
    skip = set(exclude)
    now = time.time()
    out = []
    for lk in read_locks(backend, kind):
        if lk.key in skip:
            continue
        if lk.stale(now, stale_after):
            if remove_stale:
                log.warning("removing stale lease %s", lk.describe())
                backend.delete(lk.key)
            continue
        out.append(lk)
    return out


class Lease:
    """One lease file, refreshed in the background while held. A context manager."""

    def __init__(
        self, backend: Backend, kind: str, *, refresh_every: float | None = None, stale_after: float | None = None
    ) -> None:
        if kind not in ("save", "gc"):
            raise ValueError(kind)
        self.backend = backend
        self.kind = kind
        self.refresh_every = REFRESH_EVERY if refresh_every is None else refresh_every
        self.stale_after = STALE_AFTER if stale_after is None else stale_after
        self.key = f"{LOCKS_DIR}/{kind}-{time.time_ns():020d}-{secrets.token_hex(8)}.json"
        self._lock = threading.Lock()  # a refresh and the release never interleave
        self._released = False
        self._last_ok = 0.0
        self.lost = False

    def _doc(self) -> bytes:
        return json.dumps(
            {"format": "ckptstore.lock", "kind": self.kind, "host": _HOST, "pid": os.getpid(), "refreshed": time.time()}
        ).encode()

    def write(self) -> None:
        # visibility to other processes is what matters, not durability: after a crash the
        # holder is gone and its lease is stale anyway (an unreadable one is judged by its times),
        # so neither the file nor its folder is fsync'd
        self.backend.write_unsynced(self.key, self._doc())
        self._last_ok = time.time()

    def start_refreshing(self) -> None:
        _KEEPER.add(self)

    def refresh(self) -> bool:
        """Rewrite the lease (the keeper calls this every ``refresh_every`` seconds); False once
        it is lost or released, after which it is never written again."""
        with self._lock:
            if self._released or self.lost:
                return False
            try:
                if time.time() - self._last_ok > self.stale_after or not self.backend.exists(self.key):
                    self.lost = True  # others may have judged it stale: never resurrect it
                    return False
                self.write()
            except Exception as e:  # noqa: BLE001 - a failed refresh only shortens the lease
                log.warning("cannot refresh lease %s: %s", self.key, e)
            return True

    def held(self) -> bool:
        """True while the lease is ours: not lost, not overdue, and still on storage."""
        if self.lost or time.time() - self._last_ok > self.stale_after:
            self.lost = True
            return False
        try:
            ok = self.backend.exists(self.key)
        except OSError:
            return False
        if not ok:
            self.lost = True
        return ok

    def release(self) -> None:
        _KEEPER.remove(self)
        with self._lock:  # waits for a refresh in progress; none comes after
            self._released = True
        try:
            self.backend.delete_unsynced(self.key)  # as its writes: nothing to keep after a crash
        except OSError as e:
            log.warning("cannot remove lease %s: %s (it goes stale on its own)", self.key, e)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Keeper:
    """The one thread of a process that refreshes every lease it holds: starting (and joining) a
    thread per lease cost more than a small save itself."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[Lease, float] = {}  # lease -> when its next refresh is due (monotonic)
        self._thread: threading.Thread | None = None
        self._wake = 0.0  # when the keeper wakes next (monotonic)

    def add(self, lease: Lease) -> None:
        with self._cond:
            due = self._due[lease] = time.monotonic() + lease.refresh_every
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ckptstore-lease-keeper", daemon=True)
                self._thread.start()
            elif due < self._wake:  # waking the keeper for nothing costs a small save time
                self._cond.notify()

    def remove(self, lease: Lease) -> None:
        with self._cond:
            self._due.pop(lease, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [lease for lease, t in self._due.items() if t <= now]
                if not due:
                    self._wake = min(self._due.values(), default=now + REFRESH_EVERY)
                    self._cond.wait(self._wake - now)
                    continue
                for lease in due:
                    self._due[lease] = now + lease.refresh_every
            for lease in due:
                if not lease.refresh():
                    self.remove(lease)


_KEEPER = _Keeper()


def acquire_save(backend: Backend, *, timeout: float | None = None) -> Lease:
    """A ``save`` lease, once no live ``gc`` lease exists. Waits up to ``timeout`` seconds
    (default: ``STALE_AFTER``, after which a silent gc's lease is stale anyway)."""
    limit = STALE_AFTER + 5 if timeout is None else timeout
    start = time.monotonic()
    while True:
        lease = Lease(backend, "save")
        lease.write()
        try:
            blockers = live_locks(backend, "gc")
        except BaseException:
            lease.release()
            raise
        if not blockers:
            lease.start_refreshing()
            return lease
        lease.release()  # withdraw, so the gc can finish
        if time.monotonic() - start > limit:
            raise StorageError(
                f"cannot save to {backend.describe()}: {blockers[0].describe()} has held the store for over "
                f"{limit:.0f} s. Wait for it to finish; if that process is gone, delete {blockers[0].key}."
            )
        time.sleep(POLL)


def acquire_gc(
    backend: Backend, *, wait: float = 0.0, exclude: Iterable[str] = ()
) -> tuple[Lease | None, list[LockInfo]]:
    """A ``gc`` lease once no live ``save`` lease (other than ``exclude``) exists, waiting up to
    ``wait`` seconds. Returns (lease, []) or (None, the saves still in progress)."""
    lease = Lease(backend, "gc")
    lease.write()
    start = time.monotonic()
    try:
        while True:
            busy = live_locks(backend, "save", exclude=exclude)
            if not busy:
                lease.start_refreshing()
                return lease, []
            if time.monotonic() - start >= wait:
                lease.release()
                return None, busy
            time.sleep(POLL)
    except BaseException:
        lease.release()
        raise
