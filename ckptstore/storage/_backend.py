"""Bytes at keys: the only layer that touches storage.

A backend knows nothing of tensors or manifests. Keys are "/"-separated paths relative to the
store root. Writes are atomic: a reader sees all of the new bytes under a key or none of them.
``LocalBackend`` does its own durable write (temp file in the destination folder, fsync,
``os.replace``, fsync of the folder) and recognises a dead FUSE mount (Google Drive); every other
fsspec protocol goes through ``FsspecBackend`` (``_cloud.py``), whose unit of atomicity is one
``pipe_file`` (a single PUT or completed multipart upload on object stores).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import threading
from abc import ABC, abstractmethod
from typing import Any, Union

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .._errors import BackendUnavailableError, InsufficientSpaceError, StorageError
from ._mounts import DRIVE_TRASH_NOTE, Mount, dead_mount_message, find_mount, is_dead_mount_error

Buffer = Union[bytes, bytearray, memoryview]


class Backend(ABC):
    """The storage interface the store is written against."""

    #: the URI the store was opened with, for messages
    uri: str
    #: True when ``write(..., if_absent=True)`` asks the storage itself to refuse an existing key
    #: (O_EXCL-like); correctness never depends on it (keys are content-addressed)
    create_only: bool = False

    @abstractmethod
    def read(self, key: str) -> bytes:
        """All bytes under ``key``; ``FileNotFoundError`` when absent."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``offset`` (fewer at the end of the object)."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset={offset}, length={length}")
        return self.read(key)[offset : offset + length]

    @abstractmethod
    def write(self, key: str, data: Buffer, *, if_absent: bool = False) -> bool:
        """Store ``data`` under ``key`` atomically. With ``if_absent``, skip (return False) when
        the key already exists. Returns True when bytes were written."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under the folder ``prefix`` (recursive), including temporary files."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def mtime(self, key: str) -> float | None:
        """Modification time (POSIX seconds) or None when the backend cannot tell."""

    def sync(self) -> None:
        """Make the names of completed writes durable (local: fsync the folders)."""

    def free_bytes(self) -> int | None:
        """Free space at the destination in bytes, or None when unknown (object stores)."""
        return None

    def local_path(self, key: str) -> str | None:
        """A local filesystem path for ``key`` when there is one (enables mmap)."""
        return None

    def root_state(self) -> str:
        """'missing', 'dir' or 'file': what exists at the root itself."""
        return "dir"

    def describe(self, key: str = "") -> str:
        return self.uri.rstrip("/") + ("/" + key if key else "")

    def delete_note(self) -> str | None:
        """A note for whoever deletes here (e.g. gc on a Google Drive mount, whose deletions go to
        the Drive trash and still count against the quota); None when there is nothing to say."""
        return None


def _storage_error(e: OSError, what: str, path: str | None = None) -> OSError:
    """Turn an OSError from the storage into a ckptstore error that says what to do."""
    if isinstance(e, (StorageError, InsufficientSpaceError)):
        return e
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(
            f"{what}: no space left on the device ({e}). Nothing was committed and earlier "
            "checkpoints are intact; free space or apply a retention policy, then save again."
        )
    if is_dead_mount_error(e):
        return StorageError(dead_mount_message(what, path or e.filename or "", e))
    return StorageError(f"{what}: {e}")




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
            raise _storage_error(e, f"cannot fsync folder {d}", d) from e
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

    def __init__(self, root: str, uri: str | None = None) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.uri = uri or self.root
        self._dirty: set[str] = set()
        self._made: set[str] = set()
        self._lock = threading.Lock()
        self._mount: Mount | None | bool = False

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
            raise _storage_error(e, f"cannot access {path}", path) from e

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
            raise _storage_error(e, f"cannot read {self._path(key)}", self._path(key)) from e

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
            raise _storage_error(e, f"cannot read {path}", path) from e

    def _ensure_dir(self, d: str) -> None:
        ensure_dir(d, self._made, self._dirty, self._lock)

    def write(self, key: str, data: Buffer, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        if if_absent and self._stat(path) is not None:
            return False
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
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _storage_error(e, f"cannot write {path}", path) from e
        with self._lock:
            self._dirty.add(d)
        return True

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
                raise _storage_error(e, f"cannot list {e.filename or base}", e.filename or base) from e

        for dirpath, _dirs, files in os.walk(base, onerror=failed):
            rel = os.path.relpath(dirpath, self.root).replace(os.sep, "/")
            for f in files:
                out.append(f"{rel}/{f}" if rel != "." else f)
        return out

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _storage_error(e, f"cannot delete {path}", path) from e
        with self._lock:
            self._dirty.add(os.path.dirname(path))

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
            return shutil.disk_usage(p).free
        except OSError as e:
            raise _storage_error(e, f"cannot read the free space of {p}", p) from e

    def local_path(self, key: str) -> str | None:
        return self._path(key)


_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def open_backend(uri: str | os.PathLike[str], storage_options: dict[str, Any] | None = None, *,
                 retries: int | None = None) -> Backend:
    """The backend for a URI: a local path or ``file://`` gives ``LocalBackend``, anything else
    an ``FsspecBackend`` (``memory://``, ``s3://``, ``gs://``, ...). ``retries`` bounds how often
    one storage request is retried on a transient error (S3 and GCS; default 3)."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise TypeError(f"a store URI must be a non-empty string or path, not {uri!r}")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise ValueError(f"retries must be a non-negative int, not {retries!r}")
    options = dict(storage_options or {})
    proto = uri.split("://", 1)[0] if "://" in uri and "::" not in uri else None
    try:
        if proto in _EXTRAS:
            from ._fsspec import open_object_store

            return open_object_store(uri, proto, options, retries=retries)
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except ImportError as e:
        proto = proto or uri.split("://", 1)[0]
        extra = _EXTRAS.get(proto)
        hint = f'pip install "ckptstore[{extra}]"' if extra else "install the fsspec package for it"
        raise BackendUnavailableError(f"cannot open {uri!r}: {e}. To use {proto}://, {hint}.") from None
    except ValueError as e:
        raise ValueError(f"cannot open store URI {uri!r}: {e}") from None
    if isinstance(fs, LocalFileSystem):
        return LocalBackend(path, uri=uri)
    from ._fsspec import FsspecBackend

    return FsspecBackend(fs, path, uri, retries=retries)


def __getattr__(name: str) -> Any:  # FsspecBackend moved to _cloud.py; keep the old import working
    if name == "FsspecBackend":
        from ._fsspec import FsspecBackend

        return FsspecBackend
    raise AttributeError(name)
