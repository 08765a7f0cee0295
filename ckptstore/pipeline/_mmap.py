"""Zero-copy loading: tensors whose memory is a private (copy-on-write) mapping of object files.

A blob stored as one uncompressed object (or a range of a pack) is a view of that object's
mapping. A blob cut into several uncompressed chunks is made contiguous by mapping each chunk
file at a fixed address inside one reserved region (POSIX ``mmap`` with ``MAP_FIXED``), which
needs every chunk but the last to be a whole number of pages; chunk sizes are.

The mappings are ``MAP_PRIVATE``: writing to a loaded tensor copies the page and never changes
the store. The memory is released when the last tensor using it is freed. Mapping is only safe
where a file cannot vanish from under the mapping: local disks, not network or FUSE mounts
(where an access after the mount drops kills the process with SIGBUS), so the default
(:func:`mmap_default`) allows it only on local filesystem types on Linux.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

from .._errors import IntegrityError
from .._lazy import lazy
from ..storage._mounts import find_mount

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())

PAGE = mmap.PAGESIZE
_MAP_FIXED = 0x10  # the same value on Linux and macOS
_LOCAL_FS = frozenset(
    {
        "ext2",
        "ext3",
        "ext4",
        "xfs",
        "btrfs",
        "tmpfs",
        "f2fs",
        "zfs",
        "overlay",
        "bcachefs",
        "jfs",
        "reiserfs",
        "apfs",
        "hfs",
    }
)
_fs_cache: dict[int, bool] = {}
_fs_lock = threading.Lock()


def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    return libc


_LIBC: Any = None


def supported() -> bool:
    return sys.platform.startswith("linux") or sys.platform == "darwin"


def _fs_type(path: str) -> str | None:
    """The filesystem type of the mount holding ``path`` (None when the mount table is unreadable)."""
    m = find_mount(os.path.realpath(path))
    return m.fstype if m is not None else None


def mmap_default(path: str) -> bool:
    """Whether loads map object files by default: on Linux, for local filesystem types."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return False
    with _fs_lock:
        if dev not in _fs_cache:
            _fs_cache[dev] = _fs_type(path) in _LOCAL_FS
        return _fs_cache[dev]


def _open_checked(path: str, size: int, key: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    st = os.fstat(fd)
    if st.st_size != size:
        os.close(fd)
        raise IntegrityError(f"object {key} has {st.st_size} bytes, expected {size} (truncated?)", key)
    return fd


def map_file(path: str, size: int, key: str) -> torch.Tensor:
    """A 1-D uint8 tensor over a private mapping of the whole file (``size`` bytes)."""
    if size == 0:
        return torch.empty(0, dtype=torch.uint8)
    fd = _open_checked(path, size, key)
    try:
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_COPY)
    finally:
        os.close(fd)
    return torch.frombuffer(mm, dtype=torch.uint8)


def stitchable(lengths: list[int]) -> bool:
    return all(n > 0 and n % PAGE == 0 for n in lengths[:-1]) and bool(lengths) and lengths[-1] > 0


def map_files(parts: list[tuple[str, int, str]]) -> torch.Tensor:
    """One contiguous 1-D uint8 tensor over private mappings of several files, in order.
    Every file but the last must be a whole number of pages (see :func:`stitchable`)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc()
    total = sum(n for _, n, _ in parts)
    region = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    anchor = ctypes.c_char.from_buffer(region)
    base = ctypes.addressof(anchor)
    del anchor  # the region stays mapped; only the export is dropped
    try:
        off = 0
        for path, n, key in parts:
            fd = _open_checked(path, n, key)
            try:
                got = _LIBC.mmap(base + off, n, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE | _MAP_FIXED, fd, 0)
            finally:
                os.close(fd)
            if got is None or got != base + off:
                err = ctypes.get_errno()
                raise OSError(err, f"cannot map {path}: {os.strerror(err)}")
            off += n
    except BaseException:
        region.close()  # unmaps the whole range, fixed mappings included
        raise
    # the tensor keeps ``region`` alive; closing it (when the tensor is freed) unmaps every part
    return torch.frombuffer(region, dtype=torch.uint8)
