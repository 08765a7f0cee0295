"""An independent reader of the compressed codecs, written from docs/format.md §4.1 and §4.3 alone
(zstandard, numpy and the store's files; nothing from ckptstore's codec module or c-blosc). It
decodes every object a real save wrote and checks the raw hash the manifest records, so the spec
and the code cannot drift apart."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import blake3
import numpy as np
import pytest
import torch
import zstandard

import ckptstore

GOLDEN_BG = os.path.join(os.path.dirname(__file__), "golden", "zstd-bg")


class SpecError(Exception):
    pass


def _zstd(frame: bytes, size: int) -> bytes:
    out = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
    if len(out) != size:
        raise SpecError("zstd frame decodes to the wrong size")
    return out


def decode_zstd_bg(stored: bytes, raw_size: int, g: int) -> bytes:
    """§4.1: header (u8 G, u8[G] methods, u64[G] lengths), G plane sections, the tail."""
    hsize = 1 + 9 * g
    fields = struct.unpack_from(f"<B{g}B{g}Q", stored, 0)
    if fields[0] != g:
        raise SpecError("G differs from the name")
    methods, lengths = fields[1 : 1 + g], fields[1 + g :]
    n, t = divmod(raw_size, g)
    if hsize + sum(lengths) + t != len(stored):
        raise SpecError("lengths do not add up")
    out = bytearray(raw_size)
    pos = hsize
    for i, (method, length) in enumerate(zip(methods, lengths)):
        sec = stored[pos : pos + length]
        plane = sec if method == 0 else _zstd(sec, n)
        if method not in (0, 1) or len(plane) != n:
            raise SpecError("bad plane")
        out[i : n * g : g] = plane
        pos += length
    out[n * g :] = stored[pos : pos + t]
    return bytes(out)


def decode_blosc(stored: bytes, raw_size: int, g: int) -> bytes:
    """§4.3: a Blosc 1 buffer (16-byte header, block offsets, streams, unshuffle)."""
    if len(stored) < 16:
        raise SpecError("shorter than the header")
    version, _lz, flags, typesize, nbytes, blocksize, cbytes = struct.unpack_from("<BBBBIII", stored, 0)
    if version != 2 or flags & 0x04 or flags & 0x08 or flags >> 5 != 4:
        raise SpecError(f"header: version {version}, flags {flags:#x}")
    if typesize != g or nbytes != raw_size or cbytes != len(stored):
        raise SpecError("header disagrees with the manifest")
    if flags & 0x02:  # stored raw
        if cbytes != 16 + nbytes:
            raise SpecError("raw buffer of the wrong size")
        return stored[16:]
    nblocks = -(-nbytes // blocksize)
    starts = struct.unpack_from(f"<{nblocks}I", stored, 16)
    out = bytearray()
    for b, start in enumerate(starts):
        bsize = blocksize if b < nblocks - 1 else nbytes - (nblocks - 1) * blocksize
        leftover = b == nblocks - 1 and nbytes % blocksize != 0
        split = not flags & 0x10 and g <= 16 and blocksize // g >= 128 and not leftover
        nstreams = g if split else 1
        size = bsize // nstreams
        shuffled, pos = bytearray(), start
        for _ in range(nstreams):
            (c,) = struct.unpack_from("<I", stored, pos)
            pos += 4
            if pos + c > len(stored):
                raise SpecError("stream outside the buffer")
            data = stored[pos : pos + c]
            shuffled += data if c == size else _zstd(data, size)
            pos += c
        if flags & 0x01 and g > 1:
            m = bsize // g
            block = bytearray(shuffled)  # keeps the last bsize mod g bytes as they are
            for j in range(g):
                block[j : m * g : g] = shuffled[j * m : (j + 1) * m]
            shuffled = block
        out += shuffled
    return bytes(out)


def read_store(root: Path) -> dict[str, int]:
    """Decode every object of every manifest by the spec; the codecs seen, with counts."""
    seen: dict[str, int] = {}
    for name in sorted(os.listdir(root / "manifests")):
        m = json.loads((root / "manifests" / name).read_text())
        for key, info in m["objects"].items():
            stored = (root / "objects" / key[:2] / key).read_bytes()
            assert blake3.blake3(stored).hexdigest() == key
            codec = info["codec"]
            if codec == "none":
                raw = stored
            elif codec == "zstd":
                raw = _zstd(stored, info["raw_size"])
            elif codec.startswith("zstd-bg"):
                raw = decode_zstd_bg(stored, info["raw_size"], int(codec[len("zstd-bg") :]))
            elif codec.startswith("blosc-zstd-bg"):
                raw = decode_blosc(stored, info["raw_size"], int(codec[len("blosc-zstd-bg") :]))
            else:
                raise AssertionError(f"codec {codec} is not in format.md §4")
            assert len(raw) == info["raw_size"]
            if codec != "none":
                assert blake3.blake3(raw).hexdigest() == info["raw_hash"], (key, codec)
            seen[codec] = seen.get(codec, 0) + 1
    return seen


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    w = torch.randn(1_500_003, generator=g) * 0.02  # chunks of several 1 MiB blocks and a leftover
    return {
        "f32": w,
        "bf16": w[:1_200_001].bfloat16(),
        "f16": w[:700_000].half(),
        "f64": w[:300_001].double(),
        "i64": torch.arange(250_000) * 7,
        "small": torch.arange(1000.0),  # a pack
        "tiny": torch.tensor([1.5, 2.5]),  # packed with "small"
    }


@pytest.mark.parametrize("chunk_size", [1 << 20, 4 << 20])
def test_spec_reader_decodes_what_the_writer_writes(tmp_path: Path, chunk_size: int) -> None:
    state = _state()
    ckptstore.Store(tmp_path, chunk_size=chunk_size).save(state, step=1, rng=False, compression="zstd")
    seen = read_store(tmp_path)
    assert {"zstd-bg2", "blosc-zstd-bg4", "blosc-zstd-bg8"} <= set(seen)  # blosc-zstd-bg2: every-length test


def test_spec_reader_decodes_the_old_byte_grouped_store() -> None:
    seen = read_store(Path(GOLDEN_BG))
    assert {"zstd-bg2", "zstd-bg4", "zstd-bg8"} <= set(seen)


@pytest.mark.parametrize("g", [2, 4, 8])
@pytest.mark.parametrize("n", [0, 1, 127, 128, 1000, (1 << 20) + 5, 3 << 20])
def test_spec_reader_and_codec_agree_on_every_length(g: int, n: int) -> None:
    from ckptstore.pipeline._codec import get_codec

    rng = np.random.default_rng(n)
    raw = (rng.standard_normal(n // 4 + 1).astype(np.float32) * 0.02).view(np.uint8)[:n].copy()
    stored = bytes(get_codec(f"blosc-zstd-bg{g}").encode(raw))
    assert decode_blosc(stored, n, g) == raw.tobytes()
