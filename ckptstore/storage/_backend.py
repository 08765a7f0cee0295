"""The storage interface: bytes at keys. The only layer that touches storage.

A backend knows nothing of tensors or manifests. Keys are "/"-separated paths relative to the
store root. Writes are atomic: a reader sees all of the new bytes under a key or none of them.
Implementations: ``LocalBackend`` (``_local.py``: its own durable write, dead FUSE mounts) and
``FsspecBackend`` (``_fsspec.py``: every other fsspec protocol, one ``pipe_file`` per write).
``open_backend`` (``_open.py``) picks one for a URI. A new backend subclasses ``Backend`` and
passes the contract suite in ``ckptstore.testing``.
"""

from __future__ import annotations

import errno
from abc import ABC, abstractmethod
from collections.abc import Sequence

from typing_extensions import Buffer

from .._errors import InsufficientSpaceError, StorageError
from ._mounts import dead_mount_message, is_dead_mount_error


class Backend(ABC):
    """The storage interface the store is written against.

    Capability flags (class or instance attributes) say what a backend does beyond the abstract
    methods; the core and the contract suite read them instead of probing types or attributes:

    - ``supports_create_only``: ``write(..., if_absent=True)`` asks the storage itself to refuse
      an existing key (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``), so two writers
      racing on a key cannot both win. Correctness never depends on it: keys are content-addressed.
    - ``trusts_existing_objects``: a create-only write that finds the key taken returns False
      without reading the bytes back (local disk: an atomic rename cannot tear an object). When
      False, a damaged copy under a hash name is detected and replaced by the write.
    - ``supports_multipart``: large objects go up in parts of ``part_size`` bytes (None: the
      library's default); setting ``part_size`` on a backend without it changes nothing.
    - ``supports_mtime``: ``mtime`` returns the time of the last write, not None. Garbage
      collection ages unreferenced objects and temporary files, and stale leases, by it; without
      it they are never considered old.
    - ``supports_local_writes``: the save pipeline may write objects straight to the files that
      ``local_path`` names (``pipeline._objwrite.LocalSink``: temporary file, fsync, rename,
      folder fsync, with the fsyncs batched per save), bypassing ``write``. Needs ``local_path``.
    - ``supports_zero_copy``: ``read_into`` fills the caller's buffer straight from the storage
      and ``write_parts`` sends the caller's buffers as they are: no temporary copy of an object
      either way, so the pipelines need no memory budget for a transfer and may keep up to
      ``parallel_transfers`` of them in flight (object stores answer each request slowly, but
      many at once).
    """

    #: the URI the store was opened with, for messages
    uri: str
    supports_create_only: bool = False
    trusts_existing_objects: bool = True
    supports_multipart: bool = False
    supports_mtime: bool = False
    supports_local_writes: bool = False
    supports_zero_copy: bool = False
    #: transfers worth keeping in flight at once where ``supports_zero_copy`` (else: one per worker)
    parallel_transfers: int = 1
    #: multipart part size in bytes when ``supports_multipart`` (None: the library's default)
    part_size: int | None = None

    @abstractmethod
    def read(self, key: str) -> bytes:
        """All bytes under ``key``; ``FileNotFoundError`` when absent."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes of ``key`` from ``offset`` (fewer at the end of the object)."""
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset={offset}, length={length}")
        return self.read(key)[offset : offset + length]

    def read_into(self, key: str, out: Buffer) -> int:
        """Read all bytes under ``key`` into ``out`` (a writable buffer of the size the caller
        expects) and return the object's size; when that differs from ``len(out)``, ``out`` is
        left unspecified (the caller reports it). ``FileNotFoundError`` when absent. Backends that
        can fill the buffer straight from the storage override it (no intermediate ``bytes``)."""
        data = self.read(key)
        view = memoryview(out).cast("B")
        if len(data) == len(view):
            view[:] = data
        return len(data)

    @abstractmethod
    def write(self, key: str, data: Buffer, *, if_absent: bool = False) -> bool:
        """Store ``data`` under ``key`` atomically. With ``if_absent``, skip (return False) when
        the key already exists. Returns True when bytes were written."""

    def write_unsynced(self, key: str, data: Buffer) -> None:
        """Store ``data`` under ``key`` atomically and visibly to other processes, without making
        it durable (no fsync, and ``sync`` does not cover it): for files worthless after a crash,
        such as leases."""
        self.write(key, data)

    def write_parts(self, key: str, parts: Sequence[Buffer], *, if_absent: bool = False) -> bool:
        """``write`` of the concatenation of ``parts`` (a pack's tensors and padding). Backends
        that can send the parts as they are override it; this one joins them first."""
        views = [v for v in (memoryview(p).cast("B") for p in parts) if len(v)]
        data: Buffer = views[0] if len(views) == 1 else b"".join(views)
        return self.write(key, data, if_absent=if_absent)

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under the folder ``prefix`` (recursive), including temporary files."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def delete_unsynced(self, key: str) -> None:
        """``delete`` without making the removal durable (``sync`` does not cover it): for files
        written with ``write_unsynced``."""
        self.delete(key)

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def mtime(self, key: str) -> float | None:
        """Modification time (POSIX seconds) or None when the backend cannot tell."""

    def sync(self) -> None:  # noqa: B027 - optional: object stores have nothing to do
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


def storage_error(e: OSError, what: str, path: str | None = None) -> OSError:
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
