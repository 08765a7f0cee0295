"""Codec blosc-zstd-bgG (docs/format.md §4.3): round trips for every width and length, decoding
straight into the destination, hostile buffers refused, and old stores still loading."""

from __future__ import annotations

import os
import shutil
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import ckptstore
from ckptstore import IntegrityError
from ckptstore.pipeline._codec import get_codec

from .helpers import assert_same
from .make_golden_zstd_bg import golden_bg_state

GOLDEN_BG = os.path.join(os.path.dirname(__file__), "golden", "zstd-bg")
LENGTHS = [0, 1, 7, 127, 128, 129, 4095, 300_001, 1 << 20, (1 << 20) + 3, (3 << 20) + 5]


def _weights(nbytes: int, dtype: torch.dtype, seed: int = 1) -> np.ndarray:
    """Trained-like floats (small normal values) as ``nbytes`` raw bytes."""
    g = torch.Generator().manual_seed(seed)
    n = nbytes // dtype.itemsize + 1
    t = (torch.randn(n, generator=g, dtype=torch.float64) * 0.02).to(dtype)
    return t.view(torch.uint8).numpy()[:nbytes].copy()


@pytest.mark.parametrize(
    "group,dtype", [(2, torch.bfloat16), (2, torch.float16), (4, torch.float32), (8, torch.float64)]
)
@pytest.mark.parametrize("n", LENGTHS)
def test_round_trip_every_width_and_length(group: int, dtype: torch.dtype, n: int) -> None:
    codec = get_codec(f"blosc-zstd-bg{group}")
    for raw in (_weights(n, dtype), np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)):
        enc = codec.encode(raw)
        out = np.full(n, 0xAB, dtype=np.uint8)
        codec.decode_into(enc, out)
        assert np.array_equal(out, raw)
        assert np.array_equal(np.asarray(codec.decode(enc, n)), raw)


def test_decodes_straight_into_a_tensor() -> None:
    raw = _weights(3 << 20, torch.float32)
    enc = get_codec("blosc-zstd-bg4").encode(raw)
    dest = torch.zeros(len(raw) // 4)
    ptr = dest.data_ptr()
    get_codec("blosc-zstd-bg4").decode_into(enc, dest.view(torch.uint8).numpy())
    assert dest.data_ptr() == ptr
    assert np.array_equal(dest.view(torch.uint8).numpy(), raw)


@pytest.mark.parametrize("dtype,group", [(torch.float32, 4), (torch.bfloat16, 2), (torch.float64, 8)])
def test_as_small_as_the_byte_grouped_codec(dtype: torch.dtype, group: int) -> None:
    raw = _weights(4 << 20, dtype)
    new = len(get_codec(f"blosc-zstd-bg{group}").encode(raw))
    old = len(np.asarray(get_codec(f"zstd-bg{group}").encode(raw)))
    assert new < 0.95 * raw.nbytes
    assert new <= old * 1.02


def test_same_bytes_on_the_main_thread_and_a_worker() -> None:
    """Blosc runs single-threaded everywhere, so the buffer does not depend on the caller."""
    raw = _weights(5 << 20, torch.float32)
    codec = get_codec("blosc-zstd-bg4")
    main = bytes(codec.encode(raw))
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(bytes(codec.encode(raw))))
    t.start()
    t.join()
    assert got == [main]


def _buffer(n: int = (2 << 20) + 8) -> bytes:
    return bytes(get_codec("blosc-zstd-bg4").encode(_weights(n, torch.float32)))


def _patch(buf: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(buf)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


_GOOD = None


def _good() -> bytes:
    global _GOOD
    if _GOOD is None:
        _GOOD = _buffer()
    return _GOOD


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:10],  # shorter than the header
        lambda b: b[:-1],  # truncated: cbytes disagrees
        lambda b: _patch(b, 0, "<B", 3),  # a Blosc2 chunk version
        lambda b: _patch(b, 2, "<B", b[2] | 0x04),  # bit shuffle
        lambda b: _patch(b, 2, "<B", (b[2] & 0x1F) | (1 << 5)),  # lz4, not zstd
        lambda b: _patch(b, 2, "<B", b[2] | 0x08),  # reserved bit
        lambda b: _patch(b, 3, "<B", 2),  # typesize differs from the name
        lambda b: _patch(b, 4, "<I", ((2 << 20) + 8) - 4),  # nbytes differs from the manifest
        lambda b: _patch(b, 8, "<I", 0),  # block size 0
        lambda b: _patch(b, 16, "<I", 0xFFFFFF00),  # a block offset outside the buffer
        lambda b: _patch(b, struct.unpack_from("<I", b, 16)[0], "<I", 0x7FFFFFF0),  # a stream too long
        lambda b: _patch(b, struct.unpack_from("<I", b, 16)[0] + 4, "<I", 0),  # a frame that is not zstd
    ],
)
def test_damaged_buffers_are_refused(damage) -> None:
    out = np.empty((2 << 20) + 8, dtype=np.uint8)
    with pytest.raises(IntegrityError):
        get_codec("blosc-zstd-bg4").decode_into(damage(_good()), out)


def _blosc_object(root: Path) -> Path:
    m = ckptstore.Store(root).manifest()
    key = next(k for k, o in m.objects.items() if o.codec == "blosc-zstd-bg4")
    return root / "objects" / key[:2] / key


def test_damaged_object_in_a_store_is_an_integrity_error(tmp_path: Path) -> None:
    state = {"w": torch.from_numpy(_weights(3 << 20, torch.float32).view(np.float32))}
    ckptstore.save(state, tmp_path, step=1, compression="zstd")
    path = _blosc_object(tmp_path)
    b = bytearray(path.read_bytes())
    b[3] = 8  # typesize: the hash check finds it, and without it the header check does
    os.chmod(path, 0o644)
    path.write_bytes(bytes(b))
    for verify in (True, False):
        with pytest.raises(IntegrityError):
            ckptstore.load(tmp_path, verify=verify)


def test_old_byte_grouped_store_loads_verifies_and_dedups(tmp_path: Path) -> None:
    root = tmp_path / "bg"
    shutil.copytree(GOLDEN_BG, root)
    store = ckptstore.Store(root)
    assert {o.codec for o in store.manifest(1).objects.values()} == {"zstd-bg2", "zstd-bg4", "zstd-bg8"}
    for mmap in (None, False):
        assert_same(ckptstore.load(root, step=1, mmap=mmap), golden_bg_state())
    store.verify(1)
    # a new compressed save of the same state reuses the old objects: nothing new is written
    info = ckptstore.Store(root, chunk_size=256 << 10).save(golden_bg_state(), step=2, rng=False, compression="zstd")
    assert info.new_bytes == 0
    assert_same(ckptstore.load(root, step=2), golden_bg_state())


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_main_thread_calls_still_work_in_a_forked_child() -> None:
    """The helper thread that main-thread calls use does not survive fork; a child makes its own."""
    raw = _weights(1 << 20, torch.float32)
    codec = get_codec("blosc-zstd-bg4")
    enc = bytes(codec.encode(raw))  # the parent's helper thread exists now
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child reports through its exit code)
        ok = bytes(codec.encode(raw)) == enc
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_load_decodes_chunks_straight_into_the_tensors(tmp_path: Path, monkeypatch) -> None:
    """A compressed chunk that fills its part of a tensor is decoded into the tensor's memory:
    the reader asks for no decode buffer."""
    from ckptstore.pipeline import _reader

    state = {"w": torch.from_numpy(_weights(10 << 20, torch.float32).view(np.float32))}  # 3 chunks
    ckptstore.Store(tmp_path, chunk_size=4 << 20).save(state, step=1, rng=False, compression="zstd")
    m = ckptstore.Store(tmp_path).manifest()
    assert len(m.blobs[0].segments) == 3
    assert {m.objects[s.object].codec for s in m.blobs[0].segments} == {"blosc-zstd-bg4"}
    asked: list[str | None] = []
    real = _reader.scratch
    monkeypatch.setattr(_reader, "scratch", lambda n, slot=None: asked.append(slot) or real(n, slot))
    for verify in (True, False):
        assert_same(ckptstore.load(tmp_path, verify=verify), state)
    assert "decode" not in asked
