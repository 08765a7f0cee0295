"""Where a save's objects go: a sink that makes them durable by the time ``finish()`` returns.

``BackendSink`` hands each object to ``Backend.write`` (object stores, ``memory://``, ...).

``LocalSink`` is the fast path for a store on a local or mounted filesystem (a backend with
``supports_local_writes``). It writes each object the way ``LocalBackend.write`` does (a temporary file in
the destination folder, fsync, atomic rename, fsync of the folder), with these differences,
which matter for speed:

- an object's bytes may come in several parts (a pack of small tensors, with its alignment
  padding) and are written with one gather write (``os.writev``), never copied together;
- the fsync is deferred: each temporary file's writeback is started at once
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux) so the disk streams while later objects
  are hashed and written, and ``finish()`` waits for all of them (parallel fsyncs), then renames
  each into place, then fsyncs each folder once. A name therefore never points at bytes that are
  not durable, and the manifest (written after ``finish()``) never names an object that is not;
- folders are fsync'd once per save, not once per object;
- objects of at least ``DIRECT_MIN`` bytes are written with direct I/O (``O_DIRECT``) where the
  filesystem allows it: their bytes go through a small page-aligned buffer (one copy, in user
  space) straight to the device, not through the page cache. That halves the CPU a save spends
  writing (no page-cache copy, no writeback work) and leaves the page cache to training data. A
  filesystem that refuses direct I/O (``EINVAL``) gets ordinary writes from then on.

A crash leaves only temporary files, which readers ignore and garbage collection removes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import queue
import secrets
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ..format._layout import OBJECTS_DIR
from ..storage._backend import Backend, storage_error
from ..storage._local import LocalBackend, ensure_dir, fsync_dir
from ._pools import borrow

_IOV_MAX = 512
_SYNC_FILE_RANGE_WRITE = 2
_O_DIRECT = getattr(os, "O_DIRECT", 0)
#: objects at least this large are written with direct I/O (where allowed)
DIRECT_MIN = 1 << 20
#: the largest direct write and page-aligned buffer (one buffer per concurrent write)
DIRECT_PIECE = 4 << 20
#: direct writes need buffer addresses, lengths and file offsets aligned to the device's blocks;
#: whole pages satisfy every common device (logical blocks of 512 or 4096 bytes)
_DIRECT_ALIGN = 4096


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


def _write_all(fd: int, views: list[memoryview]) -> None:
    """Gather-write every byte of ``views`` (consumed) to ``fd``."""
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def _pwrite_direct(fd: int, data: memoryview, off: int) -> bool:
    """One aligned direct write, all of it; False when the filesystem refuses direct I/O."""
    done = 0
    while done < len(data):
        try:
            n = os.pwrite(fd, data[done:], off + done)
        except OSError as e:
            if e.errno == errno.EINVAL:
                return False
            raise
        if n <= 0 or n % _DIRECT_ALIGN:  # a short direct write leaves an unaligned rest: stop
            return False
        done += n
    return True


#: the names of the folders under ``objects/`` (the first two hex digits of a hash)
_FAN_OUT = [f"{i:02x}" for i in range(256)]


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

    def __init__(self, backend: Backend, workers: int = 4, *, direct: bool = True, piece: int = DIRECT_PIECE) -> None:
        self.backend = backend
        self.workers = max(1, workers)
        #: the size of one direct write and of each of the page-aligned buffers (one per concurrent write)
        self.piece = max(_DIRECT_ALIGN, piece - piece % _DIRECT_ALIGN)
        #: whether large objects are still tried with direct I/O (cleared when the filesystem refuses it)
        self.direct = bool(direct and _O_DIRECT)
        self._pending: list[tuple[str, str]] = []  # (temporary path, final path)
        self._dirs: set[str] = set()
        self._made: set[str] = set()
        mount = backend.mount if isinstance(backend, LocalBackend) else None
        #: make all 256 ``objects/xx`` folders with the first (not on FUSE mounts: Drive makes each slowly)
        self._fan_out = not (mount is not None and mount.is_fuse)
        self._lock = threading.Lock()
        self._buffers: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._all_buffers: list[mmap.mmap] = []

    def _path(self, key: str) -> str:
        path = self.backend.local_path(key)
        assert path is not None
        return path

    def _ensure_dir(self, d: str) -> None:
        if d not in self._made and self._fan_out and not os.path.isdir(d):
            parent, name = os.path.split(d)
            if len(name) == 2 and os.path.basename(parent) == OBJECTS_DIR:
                # the store's first objects: every fan-out folder at once (one fsync of objects/),
                # so that later saves find theirs and need no fsync of objects/ for a new one
                ensure_dir(parent, self._made, self._dirs, self._lock)
                for sub in _FAN_OUT:
                    try:
                        os.mkdir(os.path.join(parent, sub))
                    except FileExistsError:
                        pass
                with self._lock:
                    self._dirs.add(parent)
        ensure_dir(d, self._made, self._dirs, self._lock)

    def put(self, key: str, parts: Sequence[Any], force: bool = False) -> bool:
        """Write unless the file exists; ``force`` replaces it (an object found damaged)."""
        path = self._path(key)
        if not force and os.path.exists(path):
            return False
        d, name = os.path.split(path)
        tmp = os.path.join(d, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        views = _flat(parts)
        direct = self.direct and sum(len(v) for v in views) >= DIRECT_MIN
        try:
            self._ensure_dir(d)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            try:
                fd = os.open(tmp, flags | (_O_DIRECT if direct else 0), 0o644)
            except OSError as e:
                if not direct or e.errno != errno.EINVAL:
                    raise
                self.direct = direct = False  # this filesystem has no direct I/O
                fd = os.open(tmp, flags, 0o644)
            with self._lock:
                self._pending.append((tmp, path))
            try:
                if direct and not self._write_direct(fd, views):
                    self.direct = direct = False  # refused: write this object (and the next) the ordinary way
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_O_DIRECT)
                    os.ftruncate(fd, 0)
                if not direct:
                    _write_all(fd, views)
                    if _SFR is not None:
                        _SFR(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # start writeback now; errors surface at fsync
            finally:
                os.close(fd)
        except OSError as e:
            raise storage_error(e, f"cannot write {path}") from e
        return True

    def _write_direct(self, fd: int, views: list[memoryview]) -> bool:
        """Write ``views`` to ``fd`` (opened with ``O_DIRECT``) through a page-aligned buffer; False
        (nothing useful written) when the filesystem refuses the direct writes, so the caller
        writes the ordinary way. The last piece is padded to whole pages, then the file is cut
        back to its size."""
        try:
            buf = self._buffers.get_nowait()
        except queue.Empty:
            buf = mmap.mmap(-1, self.piece)  # anonymous mappings are page-aligned
            with self._lock:
                self._all_buffers.append(buf)
        out = memoryview(buf)
        piece = len(out)
        try:
            fill = off = 0
            for v in views:
                pos = 0
                while pos < len(v):
                    n = min(len(v) - pos, piece - fill)
                    out[fill : fill + n] = v[pos : pos + n]
                    fill += n
                    pos += n
                    if fill == piece:
                        if not _pwrite_direct(fd, out, off):
                            return False
                        off += fill
                        fill = 0
            if fill:
                whole = -(-fill // _DIRECT_ALIGN) * _DIRECT_ALIGN
                out[fill:whole] = bytes(whole - fill)
                if not _pwrite_direct(fd, out[:whole], off):
                    return False
                off += fill
                os.ftruncate(fd, off)
            return True
        finally:
            out.release()
            self._buffers.put(buf)

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

    def _free_buffers(self) -> None:
        with self._lock:
            bufs, self._all_buffers = self._all_buffers, []
        self._buffers = queue.SimpleQueue()
        for b in bufs:
            b.close()

    def finish(self) -> None:
        """Make every object written so far durable under its name."""
        self._free_buffers()
        with self._lock:
            pending, self._pending = self._pending, []
        if len(pending) > _FEW and self.workers > 1:
            with borrow(self.workers, "ckptstore-fsync") as pool:
                pool.map(self._commit, pending)
        else:
            for item in pending:
                self._commit(item)
        with self._lock:
            dirs, self._dirs = sorted(self._dirs, key=len, reverse=True), set()
        if len(dirs) > _FEW and self.workers > 1:
            with borrow(self.workers, "ckptstore-fsync") as pool:
                pool.map(fsync_dir, dirs)
        else:
            for d in dirs:
                fsync_dir(d)

    def abort(self) -> None:
        """Remove the temporary files of a save that failed."""
        self._free_buffers()
        with self._lock:
            pending, self._pending = self._pending, []
        for tmp, _ in pending:
            try:
                os.unlink(tmp)
            except OSError:
                pass


#: up to this many files (or folders) are fsync'd on the calling thread: the first fsync's journal
#: commit usually carries the others, and starting pool threads costs more (a small save)
_FEW = 4


def sink_for(backend: Backend, workers: int, *, total: int = 0) -> BackendSink | LocalSink:
    """The sink a save uses on ``backend``: ``LocalSink`` where the backend allows writes straight
    to its files (``supports_local_writes``), else ``BackendSink``. Both give the guarantees of
    ``Backend.write``; the contract suite (``ckptstore.testing``) checks each on every backend.
    ``total``: about how many bytes the save writes (sizes the direct-I/O buffers: about 0.5% of
    it each, between 1 and 4 MiB)."""
    if backend.supports_local_writes:
        piece = min(DIRECT_PIECE, max(DIRECT_MIN, total // 200)) if total else DIRECT_PIECE
        return LocalSink(backend, workers, piece=piece)
    return BackendSink(backend)
