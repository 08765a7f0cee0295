"""Codec ``blosc-zstd-bgG``: one Blosc buffer (byte shuffle of G-byte elements, then Zstandard).

The same idea as ``zstd-bgG`` (the exponent bytes of floats compress, the mantissa bytes do not),
done by c-blosc: a SIMD byte shuffle per block of 1 MiB, each block compressed as one zstd frame
(or stored raw when it does not shrink), all in C without the GIL. The stored object is exactly
the buffer c-blosc 1.x's ``blosc_compress_ctx`` writes (header format version 2); docs/format.md
§4.3 specifies it so that a reader can decode it without c-blosc.

We call c-blosc through numcodecs (``numcodecs.blosc.compress`` / ``decompress``): it imports in
tens of milliseconds and needs only numpy, where python-blosc2 (which reads the same buffers)
takes a few hundred (it imports httpx, rich, numexpr). The save and load pipelines already run one
task per object on a thread per core, so every call here is single-threaded: numcodecs runs Blosc
with one thread on any thread but the main one, and calls made on the main thread are handed to
a helper thread for that reason (the buffer is then also the same whatever the core count).
"""

from __future__ import annotations

import os
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable

from typing_extensions import Buffer

from .._errors import IntegrityError, UnsupportedFormatError
from .._lazy import lazy
from ._buffers import scratch

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy", globals(), "np")

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

#: Zstandard level (Blosc's clevel 1 is zstd level 1)
CLEVEL = 1
#: bytes per Blosc block: measured on trained GPT weights and Adam moments, 512 KiB to 4 MiB give
#: the same ratio (smaller blocks lose up to 5 points), 1 MiB keeps a block in L2/L3
BLOCK = 1 << 20
#: Blosc 1.x buffers hold at most this many bytes (c-blosc's BLOSC_MAX_BUFFERSIZE)
MAX_RAW = (1 << 31) - 1 - 16

HEADER = struct.Struct("<BBBBIII")  # version, compressor version, flags, typesize, nbytes, blocksize, cbytes
VERSION = 2
FLAG_SHUFFLE = 0x01
FLAG_MEMCPYED = 0x02
FLAG_BITSHUFFLE = 0x04
FLAG_RESERVED = 0x08
COMPRESSOR_ZSTD = 4  # the top three bits of the flags

_helper: ThreadPoolExecutor | None = None
_helper_pid = 0
_helper_lock = threading.Lock()


_available: bool | None = None


def available() -> bool:
    """Whether numcodecs can be imported (checked without importing it). It is a dependency on
    Python 3.10+; where it is missing, new saves write ``zstd-bgG`` instead."""
    global _available
    if _available is None:
        import importlib.util

        _available = importlib.util.find_spec("numcodecs") is not None
    return _available


def _blosc() -> Any:
    try:  # imported on first use: only saves and loads of compressed data need it
        from numcodecs import blosc
    except ImportError as e:
        raise UnsupportedFormatError(
            f"this checkpoint's objects use a Blosc codec (blosc-zstd-bgG), which needs numcodecs: "
            f"pip install 'numcodecs>=0.13' ({e})"
        ) from None
    return blosc


def _off_main(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` where numcodecs runs Blosc single-threaded: off the main thread."""
    global _helper, _helper_pid
    if threading.current_thread() is not threading.main_thread():
        return fn(*args)
    with _helper_lock:
        if _helper is None or _helper_pid != os.getpid():  # a forked child has no helper thread
            from concurrent.futures import ThreadPoolExecutor

            _helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ckptstore-blosc")
            _helper_pid = os.getpid()
        helper = _helper
    return helper.submit(fn, *args).result()


def _u8(b: Buffer) -> np.ndarray:
    if isinstance(b, np.ndarray):
        return b.reshape(-1).view(np.uint8)
    return np.frombuffer(b, dtype=np.uint8)


class BloscZstd:
    """``blosc-zstd-bgG`` for G = ``group``."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.name = f"blosc-zstd-bg{group}"

    def encode(self, raw: Buffer) -> Buffer:
        src = _u8(raw)
        if src.nbytes > MAX_RAW:
            raise ValueError(f"{self.name} encodes at most {MAX_RAW} bytes, got {src.nbytes} (cut the data in chunks)")
        b = _blosc()
        return _off_main(b.compress, src, b"zstd", CLEVEL, b.SHUFFLE, BLOCK, self.group)

    def check_header(self, stored: np.ndarray, raw_size: int) -> None:
        """Refuse (IntegrityError) a buffer whose header does not match format.md §4.3, before
        any of it reaches c-blosc."""
        what = f"{self.name} object"
        if stored.nbytes < HEADER.size:
            raise IntegrityError(f"{what} has {stored.nbytes} bytes, shorter than its 16-byte Blosc header")
        version, _lz, flags, typesize, nbytes, blocksize, cbytes = HEADER.unpack_from(stored, 0)
        if version != VERSION:
            raise IntegrityError(f"{what} has Blosc format version {version}, expected {VERSION}")
        if flags & (FLAG_BITSHUFFLE | FLAG_RESERVED) or flags >> 5 != COMPRESSOR_ZSTD:
            raise IntegrityError(f"{what} has Blosc flags {flags:#04x}: not byte-shuffled zstd")
        if typesize != self.group:
            raise IntegrityError(f"{what} says its elements have {typesize} bytes, its name says {self.group}")
        if nbytes != raw_size:
            raise IntegrityError(f"{what} declares {nbytes} bytes, the manifest says {raw_size}")
        if cbytes != stored.nbytes:
            raise IntegrityError(f"{what} says it has {cbytes} bytes, it has {stored.nbytes}")
        if flags & FLAG_MEMCPYED:
            if cbytes != HEADER.size + nbytes:
                raise IntegrityError(f"{what} is stored raw but has {cbytes - HEADER.size} bytes for {nbytes}")
        elif nbytes and not 0 < blocksize <= nbytes:
            raise IntegrityError(f"{what} has block size {blocksize} for {nbytes} bytes")

    def decode_into(self, stored: Buffer, out: np.ndarray) -> None:
        """Decode straight into ``out`` (1-D uint8 of the raw size): no copy in between."""
        src = _u8(stored)
        self.check_header(src, out.nbytes)
        if out.nbytes == 0:
            return
        try:
            _off_main(_blosc().decompress, src, out)
        except (RuntimeError, ValueError) as e:
            raise IntegrityError(f"{self.name} object does not decode: {e}") from None

    def decode(self, stored: Buffer, raw_size: int) -> Buffer:
        out = scratch(raw_size)
        self.decode_into(stored, out)
        return out


def library_version() -> str:
    """The c-blosc version numcodecs was built with (for benchmark records)."""
    import numcodecs

    return f"numcodecs {numcodecs.__version__}, c-blosc {_blosc().VERSION_STRING}"
