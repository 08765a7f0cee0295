"""Store.load_tensors(out=...): reading checkpoint entries straight into existing tensors, and
the piecewise hashed read of local objects that path uses."""

from __future__ import annotations

import os

import pytest
import torch

import ckptstore
from ckptstore.pipeline import _reader


def _index_of(store: ckptstore.Store, shape: tuple[int, ...]) -> int:
    return next(i for i, e in enumerate(store.manifest().tensors) if tuple(e.shape) == shape)


def _object_path(root: str, key: str) -> str:
    for d, _, files in os.walk(os.path.join(root, "objects")):
        if key in files:
            return os.path.join(d, key)
    raise FileNotFoundError(key)


@pytest.fixture
def saved(tmp_path, monkeypatch):
    monkeypatch.setattr(_reader, "READ_PIECE", 64 << 10)  # several pieces per object
    root = str(tmp_path / "s")
    state = {"big": torch.randn(300, 1000), "half": torch.randn(512, 256).half(), "tiny": torch.arange(7)}
    ckptstore.save(state, root, step=1)
    return root, state


def test_contiguous_out_receives_the_bytes_in_place(saved):
    root, state = saved
    with ckptstore.Store(root) as store:
        i, j = _index_of(store, (300, 1000)), _index_of(store, (512, 256))
        dst = [torch.zeros(300, 1000), torch.zeros(512, 256, dtype=torch.float16)]
        ptrs = [t.data_ptr() for t in dst]
        got = store.load_tensors([i, j], out=dst)
    assert got[0] is dst[0] and got[1] is dst[1]
    assert [t.data_ptr() for t in dst] == ptrs
    assert torch.equal(dst[0], state["big"]) and torch.equal(dst[1], state["half"])


def test_other_out_tensors_get_a_copy(saved):
    root, state = saved
    with ckptstore.Store(root) as store:
        i, k = _index_of(store, (300, 1000)), _index_of(store, (7,))
        strided = torch.zeros(1000, 300).t()  # not contiguous
        wider = torch.zeros(7, dtype=torch.float64)  # another dtype: converted like copy_
        got = store.load_tensors([i, k, i], out=[strided, wider, None])
    assert got[0] is strided and torch.equal(strided, state["big"])
    assert got[1] is wider and torch.equal(wider, state["tiny"].double())
    assert torch.equal(got[2], state["big"]) and got[2] is not strided


def test_bad_out_is_refused(saved):
    root, _ = saved
    with ckptstore.Store(root) as store:
        i = _index_of(store, (300, 1000))
        with pytest.raises(ValueError, match="one per index"):
            store.load_tensors([i], out=[None, None])
        with pytest.raises(ValueError, match="shape"):
            store.load_tensors([i], out=[torch.zeros(300, 999)])
        untouched = torch.zeros(300, 1000)
        with pytest.raises(ValueError, match="shape"):  # refused before any read
            store.load_tensors([i, i], out=[untouched, torch.zeros(3)])
        assert not untouched.any()


@pytest.mark.parametrize("where", ["start", "end"])
def test_damage_is_found_when_reading_into_out(saved, where):
    root, _ = saved
    with ckptstore.Store(root) as store:
        i = _index_of(store, (300, 1000))
        (seg,) = store.manifest().blobs[store.manifest().tensors[i].blob].segments
    path = _object_path(root, seg.object)
    size = os.path.getsize(path)
    assert size > 4 * _reader.READ_PIECE
    pos = 10 if where == "start" else size - 10
    with open(path, "r+b") as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x40]))
    with ckptstore.Store(root) as store:
        with pytest.raises(ckptstore.IntegrityError, match="does not match its hash"):
            store.load_tensors([i], out=[torch.zeros(300, 1000)])
        with pytest.raises(ckptstore.IntegrityError, match="does not match its hash"):
            store.load_tensors([i], mmap=False)
        # without verification the damaged bytes arrive as stored
        got = store.load_tensors([i], out=[torch.zeros(300, 1000)], verify=False)
        assert got[0].numel() == 300_000


def test_truncated_object_is_found(saved):
    root, _ = saved
    with ckptstore.Store(root) as store:
        i = _index_of(store, (300, 1000))
        (seg,) = store.manifest().blobs[store.manifest().tensors[i].blob].segments
    path = _object_path(root, seg.object)
    os.truncate(path, os.path.getsize(path) - 1)
    with ckptstore.Store(root) as store:
        with pytest.raises(ckptstore.IntegrityError, match="truncated"):
            store.load_tensors([i], out=[torch.zeros(300, 1000)])


def test_compressed_objects_decode_into_out(tmp_path):
    root = str(tmp_path / "z")
    w = torch.randn(256, 1024)
    ckptstore.save({"w": w}, root, step=1, compression="zstd")
    with ckptstore.Store(root) as store:
        dst = torch.empty(256, 1024)
        (got,) = store.load_tensors([0], out=[dst])
    assert got is dst and torch.equal(dst, w)


def test_chunked_tensor_lands_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(_reader, "READ_PIECE", 1 << 20)
    root = str(tmp_path / "c")
    w = torch.randn(5 << 20)  # 20 MiB: several objects of the smallest chunk size
    with ckptstore.Store(root, chunk_size=4 << 20) as store:
        store.save({"w": w}, step=1)
        assert len(store.manifest().blobs[0].segments) > 1
        dst = torch.empty(5 << 20)
        (got,) = store.load_tensors([0], out=[dst])
    assert got is dst and torch.equal(dst, w)


def test_out_tensors_sharing_memory_are_not_read_into_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(_reader, "READ_PIECE", 64 << 10)  # many pieces: two reads would interleave
    root = str(tmp_path / "o")
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    ckptstore.save({"a": a, "b": b}, root, step=1)
    with ckptstore.Store(root) as store:
        ia, ib = 0, 1  # entries in the state's order: "a", "b"
        both = torch.empty(1024, 1024)
        for _ in range(5):  # one read lands directly, the other is copied after it: no false damage
            got = store.load_tensors([ia, ib], out=[both, both])
            assert got[0] is both and got[1] is both
        store.verify()
    assert torch.equal(both, b) or torch.equal(both, a)


def test_special_out_tensors_get_a_copy_and_autograd_sees_the_write(saved):
    root, state = saved
    with ckptstore.Store(root) as store:
        i = _index_of(store, (300, 1000))
        same_count = torch.zeros(1000, 300)  # as many elements, another shape: refused, not filled
        with pytest.raises(ValueError, match="shape"):
            store.load_tensors([i], out=[same_count])
        leaf = torch.zeros(300, 1000, requires_grad=True)
        before = leaf._version
        (got,) = store.load_tensors([i], out=[leaf])
        assert got is leaf and torch.equal(leaf.detach(), state["big"])
        assert leaf._version > before  # in-place write recorded: autograd refuses stale graphs


def test_conjugate_view_out_gets_a_copy(tmp_path):
    root = str(tmp_path / "c")
    z = torch.randn(64, 64, dtype=torch.complex64)
    ckptstore.save({"z": z}, root, step=1)
    with ckptstore.Store(root) as store:
        dst = torch.zeros(64, 64, dtype=torch.complex64).conj()
        (got,) = store.load_tensors([0], out=[dst])
    assert got is dst and torch.equal(dst, z)
