"""Where a save's objects go: a sink that makes them durable by the time ``finish()`` returns.

``BackendSink`` hands each object to ``Backend.write`` (object stores, ``memory://``, ...).

``LocalSink`` is the fast path for a store on a local or mounted filesystem (a backend with
``supports_local_writes``). It writes each object the way ``LocalBackend.write`` does (a temporary file in
the destination folder, fsync, atomic rename, fsync of the folder), with three differences that
matter for speed:

- an object's bytes may come in several parts (a pack of small tensors, with its alignment
  padding) and are written with one gather write (``os.writev``), never copied together;
- the fsync is deferred: each temporary file's writeback is started at once
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux) so the disk streams while later objects
  are hashed and written, and ``finish()`` waits for all of them (parallel fsyncs), then renames
  each into place, then fsyncs each folder once. A name therefore never points at bytes that are
  not durable, and the manifest (written after ``finish()``) never names an object that is not;
- folders are fsync'd once per save, not once per object.

A crash leaves only temporary files, which readers ignore and garbage collection removes.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..storage._backend import Backend, storage_error
from ..storage._local import ensure_dir, fsync_dir

_IOV_MAX = 512
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_SFR = _sync_file_range()


def _flat(parts: Sequence[Any]) -> list[memoryview]:
    return [v for v in (memoryview(p).cast("B") for p in parts) if len(v)]


class BackendSink:
    """Objects through ``Backend.write`` (the backend's own atomicity and durability)."""

    #: an object's parts may be joined into one buffer for the write (``Backend.write_parts``;
    #: S3 sends them as they are); writes wait on the storage (the network), so the pipeline
    #: runs one thread per worker, not per core
    joins_parts = True

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def put(self, key: str, parts: Sequence[Any], force: bool = False) -> bool:
        """Write unless the key exists; ``force`` overwrites (an object found damaged)."""
        return self.backend.write_parts(key, _flat(parts), if_absent=not force)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


class LocalSink:
    """Objects as files under a local root, made durable together in ``finish()``."""

    #: parts go to the file with one gather write; writes hardly block (writeback runs in the kernel)
    joins_parts = False

    def __init__(self, backend: Backend, workers: int = 4) -> None:
        self.backend = backend
        self.workers = max(1, workers)
        self._pending: list[tuple[str, str]] = []  # (temporary path, final path)
        self._dirs: set[str] = set()
        self._made: set[str] = set()
        self._lock = threading.Lock()

    def _path(self, key: str) -> str:
        path = self.backend.local_path(key)
        assert path is not None
        return path

    def _ensure_dir(self, d: str) -> None:
        ensure_dir(d, self._made, self._dirs, self._lock)

    def put(self, key: str, parts: Sequence[Any], force: bool = False) -> bool:
        """Write unless the file exists; ``force`` replaces it (an object found damaged)."""
        path = self._path(key)
        if not force and os.path.exists(path):
            return False
        d, name = os.path.split(path)
        tmp = os.path.join(d, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        views = _flat(parts)
        try:
            self._ensure_dir(d)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with self._lock:
                self._pending.append((tmp, path))
            try:
                while views:
                    n = os.writev(fd, views[:_IOV_MAX])
                    while views and n >= len(views[0]):
                        n -= len(views[0])
                        views.pop(0)
                    if n:
                        views[0] = views[0][n:]
                if _SFR is not None:
                    _SFR(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # start writeback now; errors surface at fsync
            finally:
                os.close(fd)
        except OSError as e:
            raise storage_error(e, f"cannot write {path}") from e
        return True

    def _commit(self, item: tuple[str, str]) -> None:
        tmp, path = item
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            raise storage_error(e, f"cannot write {path}") from e
        with self._lock:
            self._dirs.add(os.path.dirname(path))

    def finish(self) -> None:
        """Make every object written so far durable under its name."""
        with self._lock:
            pending, self._pending = self._pending, []
        if len(pending) > 1 and self.workers > 1:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckptstore-fsync") as pool:
                list(pool.map(self._commit, pending))
        else:
            for item in pending:
                self._commit(item)
        with self._lock:
            dirs, self._dirs = sorted(self._dirs, key=len, reverse=True), set()
        if len(dirs) > 1 and self.workers > 1:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="ckptstore-fsync") as pool:
                list(pool.map(fsync_dir, dirs))
        else:
            for d in dirs:
                fsync_dir(d)

    def abort(self) -> None:
        """Remove the temporary files of a save that failed."""
        with self._lock:
            pending, self._pending = self._pending, []
        for tmp, _ in pending:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def sink_for(backend: Backend, workers: int) -> BackendSink | LocalSink:
    """The sink a save uses on ``backend``: ``LocalSink`` where the backend allows writes straight
    to its files (``supports_local_writes``), else ``BackendSink``. Both give the guarantees of
    ``Backend.write``; the contract suite (``ckptstore.testing``) checks each on every backend."""
    if backend.supports_local_writes:
        return LocalSink(backend, workers)
    return BackendSink(backend)
