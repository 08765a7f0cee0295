"""The float-aware codecs: zstd-bgG (read forever) and blosc-zstd-bgG (written by new saves):
round trips, plane choices, hostile input."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from ckptstore import IntegrityError
from ckptstore.pipeline._codec import get_codec, group_for_dtype, object_codec, resolve_compression


def _bytes(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view(-1).view(torch.uint8).numpy().copy()


def _float_weights(n: int, dtype: torch.dtype) -> np.ndarray:
    g = torch.Generator().manual_seed(1)
    base = torch.float64 if dtype == torch.float64 else torch.float32
    return _bytes((torch.randn(n, generator=g, dtype=base) * 0.02).to(dtype))


@pytest.mark.parametrize("group", [2, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 4095, 300_001, 1 << 20])
def test_byte_grouped_round_trip_any_length(group: int, n: int) -> None:
    """Lengths not divisible by the group keep their tail; compressible and random planes."""
    rng = np.random.default_rng(n + group)
    raw = rng.integers(0, 256, n, dtype=np.uint8)
    raw[group - 1 :: group] = rng.integers(60, 64, len(raw[group - 1 :: group]), dtype=np.uint8)
    codec = get_codec(f"zstd-bg{group}")
    enc = codec.encode(raw)
    out = np.empty(n, dtype=np.uint8)
    codec.decode_into(enc, out)
    assert np.array_equal(out, raw)
    assert np.array_equal(np.asarray(codec.decode(enc, n)), raw)


@pytest.mark.parametrize(
    "dtype,group,bound",
    [(torch.float32, 4, 0.90), (torch.bfloat16, 2, 0.75), (torch.float16, 2, 0.90), (torch.float64, 8, 0.90)],
)
def test_float_planes_compress_and_mantissas_stay_raw(dtype: torch.dtype, group: int, bound: float) -> None:
    raw = _float_weights(1 << 18, dtype)
    assert group_for_dtype("torch", str(dtype).removeprefix("torch.")) == group
    codec = get_codec(f"zstd-bg{group}")
    enc = np.asarray(codec.encode(raw))
    assert enc.nbytes < bound * raw.nbytes
    methods = struct.unpack_from(f"<B{group}B", enc, 0)[1:]
    assert methods[-1] == 1  # the plane with the sign and exponent is compressed
    assert methods[0] == 0  # the lowest mantissa byte is random: stored raw
    out = np.empty_like(raw)
    codec.decode_into(enc, out)
    assert np.array_equal(out, raw)


def test_plain_zstd_round_trip_and_size_check() -> None:
    raw = np.zeros(100_000, dtype=np.uint8)
    codec = get_codec("zstd")
    enc = codec.encode(raw)
    assert len(enc) < 1000
    out = np.empty_like(raw)
    codec.decode_into(enc, out)
    assert not out.any()
    with pytest.raises(IntegrityError):
        codec.decode(enc, 99_999)


def _header(group: int, methods: list[int], lengths: list[int]) -> bytes:
    return struct.pack(f"<B{group}B{group}Q", group, *methods, *lengths)


@pytest.mark.parametrize(
    "stored",
    [
        b"",  # shorter than the header
        _header(2, [0, 0], [8, 8]) + b"x" * 15,  # lengths do not add up
        struct.pack("<B2B2Q", 4, 0, 0, 8, 8) + b"x" * 16,  # says it groups 4 bytes
        _header(2, [0, 7], [8, 8]) + b"x" * 16,  # unknown plane method
        _header(2, [0, 0], [7, 9]) + b"x" * 16,  # a raw plane of the wrong length
        _header(2, [0, 1], [8, 8]) + b"x" * 16,  # a "zstd" plane that is not a frame
    ],
)
def test_hostile_byte_grouped_objects_are_refused(stored: bytes) -> None:
    with pytest.raises(IntegrityError):
        get_codec("zstd-bg2").decode_into(stored, np.empty(16, dtype=np.uint8))


def test_zstd_plane_that_decodes_to_the_wrong_size_is_refused() -> None:
    import zstandard

    frame = zstandard.ZstdCompressor(write_content_size=True).compress(b"\x01" * 9)
    stored = _header(2, [0, 1], [8, len(frame)]) + b"x" * 8 + frame
    with pytest.raises(IntegrityError, match="declares 9 bytes"):
        get_codec("zstd-bg2").decode_into(stored, np.empty(16, dtype=np.uint8))


@pytest.mark.parametrize(
    "kind,dtype,group",
    [
        ("torch", "float32", 4),
        ("torch", "bfloat16", 2),
        ("torch", "float16", 2),
        ("torch", "float64", 8),
        ("torch", "complex64", 4),
        ("torch", "complex128", 8),
        ("torch", "int64", 8),
        ("torch", "int32", 4),
        ("torch", "bool", 1),
        ("torch", "uint8", 1),
        ("torch", "float8_e4m3fn", 1),
        ("torch", "float8_e5m2", 1),
        ("numpy", "<f4", 4),
        ("numpy", "<c16", 8),
        ("numpy", "|b1", 1),
        ("numpy", "<U5", 1),
        ("numpy", ">i8", 8),
    ],
)
def test_group_for_dtype(kind: str, dtype: str, group: int) -> None:
    assert group_for_dtype(kind, dtype) == group


def test_object_codec_names() -> None:
    assert object_codec("none", 4) == "none"
    assert object_codec("zstd", 1) == "zstd"
    assert object_codec("zstd", 2) == "zstd-bg2"  # bf16/fp16: the better ratio (see object_codec)
    assert object_codec("zstd", 4) == "blosc-zstd-bg4"
    assert object_codec("zstd", 8) == "blosc-zstd-bg8"


def test_without_numcodecs_new_saves_write_the_byte_grouped_codec(monkeypatch) -> None:
    from ckptstore.pipeline import _blosc

    monkeypatch.setattr(_blosc, "_available", False)
    assert object_codec("zstd", 4) == "zstd-bg4"


def test_user_facing_compression_names() -> None:
    assert resolve_compression(None) == resolve_compression(False) == "none"
    assert resolve_compression(True) == resolve_compression("zstd") == "zstd"
    with pytest.raises(ValueError, match="picked per dtype automatically"):
        resolve_compression("zstd-bg4")
    with pytest.raises(ValueError, match="unknown compression"):
        resolve_compression("lz4")
    with pytest.raises(TypeError):
        resolve_compression(3)  # type: ignore[arg-type]
