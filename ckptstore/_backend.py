"""Bytes at keys: the only layer that touches storage.

A backend knows nothing of tensors or manifests. Keys are "/"-separated paths relative to the
store root. Writes are atomic: a reader sees all of the new bytes under a key or none of them.
``LocalBackend`` does its own durable write (temp file in the destination folder, fsync,
``os.replace``, fsync of the folder); every other fsspec protocol goes through ``FsspecBackend``,
whose unit of atomicity is one ``pipe_file`` (a single PUT on object stores).
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import threading
from abc import ABC, abstractmethod
from typing import Any, Union

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._errors import BackendUnavailableError, InsufficientSpaceError, StorageError

Buffer = Union[bytes, bytearray, memoryview]


class Backend(ABC):
    """The storage interface the store is written against."""

    #: the URI the store was opened with, for messages
    uri: str

    @abstractmethod
    def read(self, key: str) -> bytes:
        """All bytes under ``key``; ``FileNotFoundError`` when absent."""

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


def _storage_error(e: OSError, what: str) -> OSError:
    """Turn an OSError from the storage into a ckptstore error that says what to do."""
    if isinstance(e, (StorageError, InsufficientSpaceError)):
        return e
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(
            f"{what}: no space left on the device ({e}). Nothing was committed and earlier "
            "checkpoints are intact; free space or apply a retention policy, then save again."
        )
    if e.errno == errno.ENOTCONN:
        return StorageError(
            f"{what}: the mount is disconnected ({e}). If this is a Google Drive mount, remount it "
            "(drive.mount(..., force_remount=True)) and save again."
        )
    return StorageError(f"{what}: {e}")


class LocalBackend(Backend):
    """A folder on a local (or FUSE-mounted) filesystem, written durably."""

    def __init__(self, root: str, uri: str | None = None) -> None:
        self.root = os.path.abspath(os.path.expanduser(root))
        self.uri = uri or self.root
        self._dirty: set[str] = set()
        self._made: set[str] = set()
        self._lock = threading.Lock()

    def _path(self, key: str) -> str:
        return os.path.join(self.root, *key.split("/"))

    def describe(self, key: str = "") -> str:
        return self._path(key) if key else self.root

    def root_state(self) -> str:
        if os.path.isdir(self.root):
            return "dir"
        return "file" if os.path.exists(self.root) else "missing"

    def read(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _storage_error(e, f"cannot read {self._path(key)}") from e

    def _ensure_dir(self, d: str) -> None:
        if d in self._made:
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
            with self._lock:
                self._dirty.add(os.path.dirname(m))
        self._made.add(d)

    def write(self, key: str, data: Buffer, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        if if_absent and os.path.exists(path):
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
            raise _storage_error(e, f"cannot write {path}") from e
        with self._lock:
            self._dirty.add(d)
        return True

    def sync(self) -> None:
        with self._lock:
            dirs, self._dirty = sorted(self._dirty, key=len, reverse=True), set()
        for d in dirs:
            try:
                fd = os.open(d, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # some FUSE mounts refuse
                    raise _storage_error(e, f"cannot fsync folder {d}") from e
            finally:
                os.close(fd)

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
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
            raise _storage_error(e, f"cannot delete {path}") from e
        with self._lock:
            self._dirty.add(os.path.dirname(path))

    def size(self, key: str) -> int:
        return os.stat(self._path(key)).st_size

    def mtime(self, key: str) -> float | None:
        return os.stat(self._path(key)).st_mtime

    def free_bytes(self) -> int | None:
        p = self.root
        while not os.path.exists(p):
            parent = os.path.dirname(p)
            if parent == p:
                return None
            p = parent
        return shutil.disk_usage(p).free

    def local_path(self, key: str) -> str | None:
        return self._path(key)


class FsspecBackend(Backend):
    """Any fsspec filesystem; one ``pipe_file`` per object is the atomic unit."""

    def __init__(self, fs: Any, root: str, uri: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.uri = uri

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def root_state(self) -> str:
        try:
            if self.fs.isdir(self.root):
                return "dir"
            return "file" if self.fs.exists(self.root) else "missing"
        except OSError:
            return "missing"

    def read(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise
        except OSError as e:
            raise _storage_error(e, f"cannot read {self.describe(key)}") from e

    def write(self, key: str, data: Buffer, *, if_absent: bool = False) -> bool:
        path = self._path(key)
        if if_absent and self.fs.exists(path):
            return False
        payload = data if isinstance(data, bytes) else bytes(data)
        try:
            try:
                self.fs.pipe_file(path, payload)
            except FileNotFoundError:
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
                self.fs.pipe_file(path, payload)
        except OSError as e:
            raise _storage_error(e, f"cannot write {self.describe(key)}") from e
        return True

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        root = self.fs._strip_protocol(self.root).rstrip("/")
        out = []
        for p in found:
            p = self.fs._strip_protocol(p)
            if p.startswith(root + "/"):
                out.append(p[len(root) + 1 :])
        return out

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except FileNotFoundError:
            return

    def size(self, key: str) -> int:
        return int(self.fs.size(self._path(key)))

    def mtime(self, key: str) -> float | None:
        try:
            return self.fs.modified(self._path(key)).timestamp()
        except (NotImplementedError, AttributeError, ValueError):
            return None


_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def open_backend(uri: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> Backend:
    """The backend for a URI: a local path or ``file://`` gives ``LocalBackend``, anything else
    an ``FsspecBackend`` (``memory://``, ``s3://``, ``gs://``, ...)."""
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str) or not uri:
        raise TypeError(f"a store URI must be a non-empty string or path, not {uri!r}")
    options = dict(storage_options or {})
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except ImportError as e:
        proto = uri.split("://", 1)[0]
        extra = _EXTRAS.get(proto)
        hint = f'pip install "ckptstore[{extra}]"' if extra else "install the fsspec package for it"
        raise BackendUnavailableError(f"cannot open {uri!r}: {e}. To use {proto}://, {hint}.") from None
    except ValueError as e:
        raise ValueError(f"cannot open store URI {uri!r}: {e}") from None
    if isinstance(fs, LocalFileSystem):
        return LocalBackend(path, uri=uri)
    return FsspecBackend(fs, path, uri)
