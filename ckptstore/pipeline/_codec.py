"""Object codecs: how raw bytes become stored bytes and back.
A codec is named in the manifest's object table, so a reader knows how to decode every object.

- ``none``: the raw bytes.
- ``zstd``: one Zstandard frame (level 1) of the raw bytes.
- ``zstd-bg2`` / ``zstd-bg4`` / ``zstd-bg8``: byte grouping for arrays of G-byte numbers. Byte
  ``i`` of every element goes to plane ``i``; each plane is stored either raw or as one zstd
  frame, whichever is smaller (the planes that hold a float's exponent compress well, the
  mantissa planes do not and are stored raw without spending time on them). The layout is in
  docs/format.md §4.1 ("Codec zstd-bgG"). Read forever; new saves write it for G = 2 and ``blosc-zstd-bgG`` for 4 and 8.
- ``blosc-zstd-bg2`` / ``blosc-zstd-bg4`` / ``blosc-zstd-bg8``: the same byte grouping done by
  c-blosc (SIMD shuffle per 1 MiB block, then zstd), one Blosc buffer per object; ``_blosc.py``,
  docs/format.md §4.3. About as small (bf16 +0.01), 1.1-1.5x faster both ways.

Users choose ``compression="zstd"`` (or ``None``); the writer picks the byte-grouped variant per
blob from its dtype (:func:`group_for_dtype`, :func:`object_codec`).
"""

from __future__ import annotations

import struct
import sys
import threading
from typing import TYPE_CHECKING, Protocol

import zstandard as _zstd
from typing_extensions import Buffer

from .._errors import IntegrityError
from .._lazy import lazy
from ._blosc import BloscZstd, available
from ._buffers import scratch

if TYPE_CHECKING:
    import numpy as np
else:
    np = lazy("numpy", globals(), "np")

LEVEL = 1
# a plane (or object) is stored compressed only when that saves at least this fraction
MIN_SAVING = 0.02
# planes above this size are probed with samples first: a plane whose samples do not compress
# is stored raw without compressing all of it (mantissa planes of floats)
_PROBE_MIN = 256 << 10
_PROBE_PIECES = 4
_PROBE_PIECE = 16 << 10
_PROBE_MAX_RATIO = 0.97
GROUPS = (2, 4, 8)
_LITTLE = sys.byteorder == "little"

_METHOD_RAW = 0
_METHOD_ZSTD = 1


class Codec(Protocol):
    name: str

    def encode(self, raw: Buffer) -> Buffer: ...

    def decode(self, stored: Buffer, raw_size: int) -> Buffer: ...

    def decode_into(self, stored: Buffer, out: np.ndarray) -> None:
        """Decode into ``out``, a 1-D uint8 array of exactly the raw size."""


def _u8(b: Buffer) -> np.ndarray:
    """A flat uint8 numpy view of any buffer (no copy)."""
    if isinstance(b, np.ndarray):
        return b.reshape(-1).view(np.uint8)
    return np.frombuffer(b, dtype=np.uint8)


class _Local(threading.local):
    c: _zstd.ZstdCompressor | None = None
    p: _zstd.ZstdCompressor | None = None
    d: _zstd.ZstdDecompressor | None = None


_tls = _Local()


def _compressor() -> _zstd.ZstdCompressor:
    if _tls.c is None:
        _tls.c = _zstd.ZstdCompressor(level=LEVEL, write_content_size=True)
    return _tls.c


def _plane_compressor() -> _zstd.ZstdCompressor:
    """For byte planes: level 1 with a small hash table and long minimum matches. Exponent
    planes are nearly all literals; short matches only break up their Huffman coding (measured
    on trained weights and Adam moments: the same size or smaller, and faster)."""
    if _tls.p is None:
        params = _zstd.ZstdCompressionParameters.from_level(LEVEL, hash_log=12, min_match=7, write_content_size=True)
        _tls.p = _zstd.ZstdCompressor(compression_params=params)
    return _tls.p


def _decompressor() -> _zstd.ZstdDecompressor:
    if _tls.d is None:
        _tls.d = _zstd.ZstdDecompressor()
    return _tls.d


def _zstd_decode(stored: Buffer, raw_size: int, what: str) -> bytes:
    try:
        params = _zstd.get_frame_parameters(memoryview(stored))
    except _zstd.ZstdError as e:
        raise IntegrityError(f"{what} is not a zstd frame: {e}") from None
    if params.content_size != raw_size:
        raise IntegrityError(f"{what} declares {params.content_size} bytes, the manifest says {raw_size}")
    try:
        out = _decompressor().decompress(memoryview(stored), max_output_size=raw_size)
    except _zstd.ZstdError as e:
        raise IntegrityError(f"{what} does not decode: {e}") from None
    if len(out) != raw_size:
        raise IntegrityError(f"{what} decodes to {len(out)} bytes, the manifest says {raw_size}")
    return out


class _Identity:
    name = "none"

    def encode(self, raw: Buffer) -> Buffer:
        return raw

    def decode(self, stored: Buffer, raw_size: int) -> Buffer:
        if len(_u8(stored)) != raw_size:
            raise IntegrityError(f"object has {len(_u8(stored))} bytes, manifest says {raw_size}")
        return stored

    def decode_into(self, stored: Buffer, out: np.ndarray) -> None:
        src = _u8(self.decode(stored, out.nbytes))
        out[:] = src


class _Zstd:
    name = "zstd"

    def encode(self, raw: Buffer) -> Buffer:
        return _compressor().compress(memoryview(raw))

    def decode(self, stored: Buffer, raw_size: int) -> Buffer:
        return _zstd_decode(stored, raw_size, "zstd object")

    def decode_into(self, stored: Buffer, out: np.ndarray) -> None:
        out[:] = _u8(self.decode(stored, out.nbytes))


def _compressible(plane: np.ndarray) -> bool:
    """Whether a plane looks worth compressing, judged from a few samples of it."""
    n = plane.nbytes
    if n < _PROBE_MIN:
        return True
    step = n // _PROBE_PIECES
    sample = np.concatenate([plane[i * step : i * step + _PROBE_PIECE] for i in range(_PROBE_PIECES)])
    return len(_plane_compressor().compress(memoryview(sample))) <= sample.nbytes * _PROBE_MAX_RATIO


def _split(src: np.ndarray, cols: np.ndarray, i: int, plane: np.ndarray) -> None:
    """Byte ``i`` of every group into ``plane``. Two-byte groups (bf16, fp16) are split with
    integer arithmetic on 16-bit words, about 5x faster than numpy's strided byte copy."""
    if cols.shape[1] == 2 and _LITTLE:
        words = src[: 2 * plane.nbytes].view(np.uint16)
        if i == 0:
            np.copyto(plane, words, casting="unsafe")  # the low byte, the first in memory
        else:
            np.right_shift(words, 8, out=plane, casting="unsafe")
        return
    np.copyto(plane, cols[:, i])


def _join(planes: list[np.ndarray], out: np.ndarray) -> None:
    """Interleave byte planes back into ``out`` (the inverse of ``_split``)."""
    g = len(planes)
    if g == 2 and _LITTLE:
        words = out.view(np.uint16)
        np.left_shift(planes[1], 8, out=words, dtype=np.uint16)
        np.bitwise_or(words, planes[0], out=words)
        return
    cols = out.reshape(-1, g)
    for i, plane in enumerate(planes):
        cols[:, i] = plane


class _ByteGrouped:
    """``zstd-bgG``: header, then G plane sections (raw or one zstd frame each), then the tail.

    Header: u8 G, then G u8 methods (0 raw, 1 zstd), then G u64 little-endian section lengths.
    The tail is the ``raw_size % G`` last bytes, stored raw.
    """

    def __init__(self, group: int) -> None:
        self.group = group
        self.name = f"zstd-bg{group}"
        self._header = struct.Struct(f"<B{group}B{group}Q")

    def encode(self, raw: Buffer) -> Buffer:
        src = _u8(raw)
        g = self.group
        n = src.nbytes // g
        tail = src.nbytes - n * g
        hsize = self._header.size
        out = scratch(hsize + src.nbytes, "encode")
        cols = src[: n * g].reshape(n, g)
        methods, lengths = [], []
        pos = hsize
        for i in range(g):
            plane = out[pos : pos + n]
            _split(src, cols, i, plane)  # the plane in place, as if it stays raw
            length, method = n, _METHOD_RAW
            if n and _compressible(plane):
                c = _plane_compressor().compress(memoryview(plane))
                if len(c) <= n * (1 - MIN_SAVING):
                    out[pos : pos + len(c)] = np.frombuffer(c, dtype=np.uint8)
                    length, method = len(c), _METHOD_ZSTD
            methods.append(method)
            lengths.append(length)
            pos += length
        out[pos : pos + tail] = src[n * g :]
        pos += tail
        self._header.pack_into(out, 0, g, *methods, *lengths)
        return out[:pos]

    def _sections(self, stored: np.ndarray, raw_size: int) -> list[tuple[int, int, int]]:
        g = self.group
        hsize = self._header.size
        if stored.nbytes < hsize:
            raise IntegrityError(f"{self.name} object is shorter than its header")
        fields = self._header.unpack_from(stored, 0)
        if fields[0] != g:
            raise IntegrityError(f"{self.name} object says it groups {fields[0]} bytes")
        methods, lengths = fields[1 : 1 + g], fields[1 + g :]
        n = raw_size // g
        tail = raw_size - n * g
        if hsize + sum(lengths) + tail != stored.nbytes:
            raise IntegrityError(
                f"{self.name} object has {stored.nbytes} bytes, its header accounts for {hsize + sum(lengths) + tail}"
            )
        out, pos = [], hsize
        for m, length in zip(methods, lengths):
            if m == _METHOD_RAW and length != n:
                raise IntegrityError(f"{self.name} raw plane has {length} bytes, expected {n}")
            if m not in (_METHOD_RAW, _METHOD_ZSTD):
                raise IntegrityError(f"{self.name} object uses unknown plane method {m}")
            out.append((m, pos, length))
            pos += length
        return out

    def decode_into(self, stored: Buffer, out: np.ndarray) -> None:
        src = _u8(stored)
        g = self.group
        raw_size = out.nbytes
        n = raw_size // g
        sections = self._sections(src, raw_size)
        planes = []
        for i, (m, pos, length) in enumerate(sections):
            sec = src[pos : pos + length]
            if m == _METHOD_ZSTD:
                sec = np.frombuffer(_zstd_decode(sec, n, f"{self.name} plane {i}"), dtype=np.uint8)
            planes.append(sec)
        _join(planes, out[: n * g])
        out[n * g :] = src[src.nbytes - (raw_size - n * g) :]

    def decode(self, stored: Buffer, raw_size: int) -> Buffer:
        out = scratch(raw_size)
        self.decode_into(stored, out)
        return out


_CODECS: dict[str, Codec] = {"none": _Identity(), "zstd": _Zstd()}
for _g in GROUPS:
    _CODECS[f"zstd-bg{_g}"] = _ByteGrouped(_g)
    _CODECS[f"blosc-zstd-bg{_g}"] = BloscZstd(_g)

#: what users may pass as ``compression=``; byte grouping is chosen per dtype automatically
USER_COMPRESSIONS = ("none", "zstd")


def get_codec(name: str) -> Codec:
    try:
        return _CODECS[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}: this ckptstore knows {', '.join(sorted(_CODECS))}") from None


def resolve_compression(compression: str | bool | None) -> str:
    """User-facing ``compression=`` value to ``none`` or ``zstd``: None/False -> none, True -> zstd."""
    if compression is None or compression is False:
        return "none"
    if compression is True:
        return "zstd"
    if isinstance(compression, str):
        if compression in USER_COMPRESSIONS:
            return compression
        hint = " (byte grouping is picked per dtype automatically)" if compression.startswith("zstd") else ""
        raise ValueError(f"unknown compression {compression!r}: use 'zstd' or None{hint}")
    raise TypeError(f"compression must be 'zstd', True, False or None, not {compression!r}")


_TORCH_GROUPS = {
    "float16": 2,
    "bfloat16": 2,
    "float32": 4,
    "float64": 8,
    "complex32": 2,
    "complex64": 4,
    "complex128": 8,
    "int16": 2,
    "int32": 4,
    "int64": 8,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
}


def group_for_dtype(kind: str, dtype: str) -> int:
    """Bytes per plane group for a tensor entry's dtype: the width of its scalar parts (a complex
    number groups by the width of its real part); 1 for byte-sized and unknown types."""
    if kind == "numpy":
        if len(dtype) < 3 or dtype[1] not in "fciu" or not dtype[2:].isdigit():
            return 1
        size = int(dtype[2:])
        g = size // 2 if dtype[1] == "c" else size
        return g if g in GROUPS else 1
    return _TORCH_GROUPS.get(dtype, 1)


def object_codec(compression: str, group: int) -> str:
    """The codec for an object of a blob with plane group ``group`` under ``compression``: new
    saves write ``blosc-zstd-bgG`` for 4- and 8-byte numbers (``zstd-bgG`` where numcodecs is
    not installed), ``zstd-bg2`` for 2-byte numbers, and plain ``zstd`` for everything else.

    2-byte numbers (bf16, fp16) keep ``zstd-bg2``: measured on the trained GPT state
    (``benchmarks/bench_codec.py --size medium``), Blosc's zstd compressed bf16 weights to 0.685
    of their size against 0.677 and decoded them hardly faster (1,513 against 1,477 MB/s per
    core), so the new codec would cost ratio for little on loads."""
    if compression == "none":
        return "none"
    if group not in GROUPS:
        return "zstd"
    if group == 2:
        return "zstd-bg2"
    return f"blosc-zstd-bg{group}" if available() else f"zstd-bg{group}"
