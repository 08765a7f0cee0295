"""``LocalBackend``: a folder on a local (or FUSE-mounted) filesystem, written durably.

A write goes to a temporary file in the destination folder, is fsynced and renamed over the key
(``os.replace``); ``sync`` fsyncs the folders whose entries changed. A dead FUSE mount (Google
Drive) is recognised and reported as such.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import threading

from ._backend import Backend, Buffer, storage_error
from ._mounts import DRIVE_TRASH_NOTE, Mount, find_mount


def fsync_dir(d: str) -> None:
    """Make the entries of folder ``d`` durable (a missing folder is skipped; FUSE mounts that
    refuse a folder fsync are tolerated)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # some FUSE mounts refuse
            raise storage_error(e, f"cannot fsync folder {d}", d) from e
    finally:
        os.close(fd)


def ensure_dir(d: str, made: set[str], dirty: set[str], lock: threading.Lock) -> None:
    """Create folder ``d`` and its missing parents. Each new folder's parent goes into ``dirty``
    (its new entry needs an fsync to be durable); ``d`` goes into ``made`` (a cache)."""
    if d in made:
        return
    missing = []
    p = d
    while not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for m in reversed(missing):
        try:
            os.mkdir(m)
        except FileExistsError:
            pass
        with lock:
            dirty.add(os.path.dirname(m))
    with lock:
        made.add(d)


class LocalBackend(Backend):
    """A folder on a local (or FUSE-mounted) filesystem, written durably."""

    # an existing file under a key is whole (renamed into place after an fsync): never read back
    trusts_existing_objects = True
    supports_mtime = True
    supports_local_writes = True

    def __init__(self, root: str, uri: str | None = None) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.uri = uri or self.root
        self._dirty: set[str] = set()
        self._made: set[str] = set()
        self._lock = threading.Lock()
        self._mount: Mount | bool | None = False

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def describe(self, key: str = "") -> str:
        return self._path(key) if key else self.root

    def _stat(self, path: str) -> os.stat_result | None:
        """``os.stat`` that answers None for a missing path and raises a StorageError for a dead
        mount (where ``os.path.exists`` would quietly say False)."""
        try:
            return os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise storage_error(e, f"cannot access {path}", path) from e

    def root_state(self) -> str:
        st = self._stat(self.root)
        if st is None:
            return "missing"
        return "dir" if stat.S_ISDIR(st.st_mode) else "file"

    @property
    def mount(self) -> Mount | None:
        """The mount the store lives on (None when unknown)."""
        if self._mount is False:
            self._mount = find_mount(self.root)
        return self._mount  # type: ignore[return-value]

    def delete_note(self) -> str | None:
        m = self.mount
        return DRIVE_TRASH_NOTE if m is not None and m.is_drive else None

    def read(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise storage_error(e, f"cannot read {self._path(key)}", self._path(key)) from e

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset={offset}, length={length}")
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(length)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise storage_error(e, f"cannot read {path}", path) from e

    def _ensure_dir(self, d: str) -> None:
        ensure_dir(d, self._made, self._dirty, self._lock)

    def write(self, key: str, data: Buffer, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        if if_absent and self._stat(path) is not None:
            return False
        self._write(path, data, durable=True)
        return True

    def write_unsynced(self, key: str, data: Buffer) -> None:
        self._write(self._path(key), data, durable=False)

    def _write(self, path: str, data: Buffer, *, durable: bool) -> None:
        d, name = os.path.split(path)
        tmp = os.path.join(d, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            self._ensure_dir(d)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data).cast("B")
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise storage_error(e, f"cannot write {path}", path) from e
        if durable:
            with self._lock:
                self._dirty.add(d)

    def sync(self) -> None:
        with self._lock:
            dirs, self._dirty = sorted(self._dirty, key=len, reverse=True), set()
        for d in dirs:
            fsync_dir(d)

    def exists(self, key: str) -> bool:
        return self._stat(self._path(key)) is not None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        out: list[str] = []

        def failed(e: OSError) -> None:
            if not isinstance(e, (FileNotFoundError, NotADirectoryError)):
                raise storage_error(e, f"cannot list {e.filename or base}", e.filename or base) from e

        for dirpath, _dirs, files in os.walk(base, onerror=failed):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for f in files:
                out.append(f"{rel}/{f}" if rel != "." else f)
        return out

    def delete(self, key: str) -> None:
        if self._unlink(self._path(key)):
            with self._lock:
                self._dirty.add(os.path.dirname(self._path(key)))

    def delete_unsynced(self, key: str) -> None:
        self._unlink(self._path(key))

    @staticmethod
    def _unlink(path: str) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise storage_error(e, f"cannot delete {path}", path) from e
        return True

    def size(self, key: str) -> int:
        st = self._stat(self._path(key))
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", self._path(key))
        return st.st_size

    def mtime(self, key: str) -> float | None:
        st = self._stat(self._path(key))
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", self._path(key))
        return st.st_mtime

    def free_bytes(self) -> int | None:
        p = self.root
        while self._stat(p) is None:
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent
        try:
            # what an unprivileged writer may use (f_bavail), not what the root reserve adds (f_bfree)
            if not hasattr(os, "statvfs"):  # Windows: the free space the caller may use
                return shutil.disk_usage(p).free
            st = os.statvfs(p)
            return st.f_bavail * st.f_frsize
        except OSError as e:
            raise storage_error(e, f"cannot read the free space of {p}", p) from e

    def local_path(self, key: str) -> str | None:
        return self._path(key)
