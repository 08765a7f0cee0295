"""Object codecs: how raw bytes become stored bytes and back.

A codec is named in the manifest's object table, so a reader knows how to decode every object.
``none`` stores raw bytes; ``zstd`` is Zstandard (level 1 by default, one frame).
"""

from __future__ import annotations

import threading
from typing import Protocol, Union

import zstandard as _zstd

from ._errors import IntegrityError

Buffer = Union[bytes, bytearray, memoryview]


class Codec(Protocol):
    name: str

    def encode(self, raw: Buffer) -> Buffer: ...

    def decode(self, stored: Buffer, raw_size: int) -> Buffer: ...


class _Identity:
    name = "none"

    def encode(self, raw: Buffer) -> Buffer:
        return raw

    def decode(self, stored: Buffer, raw_size: int) -> Buffer:
        if len(stored) != raw_size:
            raise IntegrityError(f"object has {len(stored)} bytes, manifest says {raw_size}")
        return stored


class _Zstd:
    name = "zstd"

    def __init__(self, level: int = 1) -> None:
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> _zstd.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = _zstd.ZstdCompressor(level=self.level, write_content_size=True)
        return c

    def _decompressor(self) -> _zstd.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = _zstd.ZstdDecompressor()
        return d

    def encode(self, raw: Buffer) -> Buffer:
        return self._compressor().compress(raw)

    def decode(self, stored: Buffer, raw_size: int) -> Buffer:
        try:
            out = self._decompressor().decompress(stored, max_output_size=raw_size)
        except _zstd.ZstdError as e:
            raise IntegrityError(f"zstd object does not decode: {e}") from None
        if len(out) != raw_size:
            raise IntegrityError(f"zstd object decodes to {len(out)} bytes, manifest says {raw_size}")
        return out


_CODECS: dict[str, Codec] = {"none": _Identity(), "zstd": _Zstd()}


def get_codec(name: str) -> Codec:
    try:
        return _CODECS[name]
    except KeyError:
        raise ValueError(
            f"unknown compression {name!r}: use one of {', '.join(sorted(_CODECS))}"
        ) from None


def codec_names() -> list[str]:
    return sorted(_CODECS)


def resolve_compression(compression: str | bool | None) -> str:
    """User-facing ``compression=`` value to a codec name: None/False -> none, True -> zstd."""
    if compression is None or compression is False:
        return "none"
    if compression is True:
        return "zstd"
    if isinstance(compression, str):
        get_codec(compression)
        return compression
    raise TypeError(f"compression must be a codec name, True, False or None, not {compression!r}")
