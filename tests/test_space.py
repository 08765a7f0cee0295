"""The disk-space guard: estimates, modes, quotas, and a real full filesystem (ENOSPC)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid

import pytest
import torch

import ckptstore
from ckptstore import InsufficientSpaceError, Retention, Store
from ckptstore.format._layout import parse_object_key
from ckptstore.format._manifest import ObjectInfo
from ckptstore.format._tensors import plan_tensors
from ckptstore.format._tree import Encoder
from ckptstore.pipeline._writer import DedupIndex
from ckptstore.store._space import compression_ratio, new_raw_bytes, parse_size, upper_bound

MiB = 1 << 20


def rand(n_floats: int, seed: int) -> torch.Tensor:
    return torch.randn(n_floats, generator=torch.Generator().manual_seed(seed))


def files(root) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for f in names:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = os.path.getsize(p)
    return out


def object_digests(root) -> set[str]:
    return {d for k in files(root) if (d := parse_object_key(k.replace(os.sep, "/"))) is not None}


def referenced(store: Store) -> set[str]:
    out = set()
    for info in store.list():
        out.update(store.manifest(id=info.id).objects)
    return out


# -- estimates --------------------------------------------------------------------------------
def test_parse_size():
    assert parse_size(0) == 0 and parse_size(None) == 0 and parse_size(123) == 123
    assert parse_size("2GiB") == 2 << 30 and parse_size("2G") == 2 << 30 and parse_size("500MB") == 500 * MiB
    assert parse_size("1.5k") == 1536 and parse_size("10 b") == 10
    for bad in ("-1", "lots", "1.2.3G", True, -5):
        with pytest.raises(ValueError):
            parse_size(bad)


def _blobs(state):
    enc = Encoder()
    enc.encode(state)
    return plan_tensors(enc.tensors).blobs


def test_new_bytes_estimate_counts_only_what_dedup_cannot_skip(tmp_path):
    base, head = rand(400_000, 1), rand(1000, 2)
    store = Store(tmp_path / "s", chunk_size=256 << 10)
    store.save({"base": base, "head": head}, step=0)
    with store.session() as s:
        index = s.index
    blobs = _blobs({"base": base, "head": rand(1000, 3)})
    assert upper_bound(blobs) > 1_600_000
    new = new_raw_bytes(blobs, index, chunk_size=256 << 10, pack_threshold=1 << 20)
    assert 4000 <= new <= 4000 + 64  # only the new head (+ pack alignment)
    empty = DedupIndex()
    assert new_raw_bytes(blobs, empty, chunk_size=256 << 10, pack_threshold=1 << 20) >= 1_604_000
    # the same content twice in one save counts once
    twice = _blobs({"a": rand(300_000, 9), "b": rand(300_000, 9)})
    assert new_raw_bytes(twice, empty, chunk_size=256 << 10, pack_threshold=1 << 20) == 1_200_000


def test_compression_ratio_from_history():
    index = DedupIndex()
    assert compression_ratio(index, "zstd") == 1.0  # no history: assume none
    index.raw_objects["a" * 64] = ("b" * 64, ObjectInfo(codec="zstd", size=400, raw_size=1000, raw_hash="a" * 64))
    assert compression_ratio(index, "zstd") == pytest.approx(0.44)  # 0.4 + 10 % margin
    assert compression_ratio(index, "none") == 1.0


# -- modes, with the free space a disk reports --------------------------------------------------
def test_fails_fast_naming_needed_and_free_bytes(tmp_path, monkeypatch):
    root = tmp_path / "s"
    store = Store(root)
    store.save({"w": rand(1000, 0)}, step=0)
    before = files(root)
    monkeypatch.setattr(store.backend, "free_bytes", lambda: 100_000)
    with pytest.raises(InsufficientSpaceError) as ei:
        store.save({"w": rand(250_000, 1)}, step=1)
    e = ei.value
    assert isinstance(e, OSError) and e.errno == errno.ENOSPC
    assert e.free == 100_000 and e.needed > 1_000_000
    msg = str(e)
    assert "step 1" in msg and f"({e.needed} bytes)" in msg and "(100000 bytes) free" in msg
    assert "Nothing was written" in msg and str(root) in msg
    assert files(root) == before  # nothing written, lease released
    assert [c.step for c in store.list()] == [0]


def test_dedup_lets_a_save_through_that_the_raw_size_would_not(tmp_path, monkeypatch):
    """Scenario 5: a large frozen base is stored once; later saves add only the small part."""
    base = rand(1_000_000, 1)  # 4 MB
    store = Store(tmp_path / "s")
    store.save({"base": base, "lora": rand(10_000, 2)}, step=0)
    monkeypatch.setattr(store.backend, "free_bytes", lambda: 1 * MiB)
    info = store.save({"base": base, "lora": rand(10_000, 3)}, step=1)
    assert info.new_bytes < 100_000
    with pytest.raises(InsufficientSpaceError) as ei:
        store.save({"base": base, "lora": rand(400_000, 4)}, step=2)
    assert 1_600_000 <= ei.value.needed < 2 * MiB  # the new part only, not the 4 MB base


def test_reserve_and_ignore(tmp_path, monkeypatch):
    s = Store(tmp_path / "s", reserve="1MiB")
    monkeypatch.setattr(s.backend, "free_bytes", lambda: 1 * MiB + 300_000)
    s.save({"w": rand(10_000, 0)}, step=0)  # 40 KB + overhead fits above the reserve
    with pytest.raises(InsufficientSpaceError, match="plus a reserve of 1.0 MiB") as ei:
        s.save({"w": rand(100_000, 1)}, step=1)
    assert ei.value.needed > 1 * MiB
    t = Store(tmp_path / "s", on_low_space="ignore")
    monkeypatch.setattr(t.backend, "free_bytes", lambda: 0)
    t.save({"w": rand(100_000, 1)}, step=1)
    with pytest.raises(ValueError, match="on_low_space"):
        Store(tmp_path / "s", on_low_space="delete")


def test_quota_for_stores_without_free_space(monkeypatch):
    uri = f"memory://quota-{uuid.uuid4().hex}"
    try:
        store = Store(uri, quota="1MiB")
        assert store.backend.free_bytes() is None
        store.save({"w": rand(150_000, 0)}, step=0)  # 600 KB
        with pytest.raises(InsufficientSpaceError, match="a quota of 1.0 MiB leaves"):
            store.save({"w": rand(150_000, 1)}, step=1)
        # make_room never removes the newest existing checkpoint, so keep_last=1 frees nothing
        with pytest.raises(InsufficientSpaceError, match="Making room removed nothing"):
            Store(uri, quota="1MiB", retention=Retention(keep_last=1), on_low_space="make_room").save(
                {"w": rand(150_000, 1)}, step=1
            )
        roomy = Store(uri, quota="1300KiB", retention=Retention(keep_last=2), on_low_space="make_room")
        for i in (1, 2, 3):
            roomy.save({"w": rand(150_000, i)}, step=i)
        assert [c.step for c in Store(uri).list()] == [2, 3]
        assert torch.equal(Store(uri).load(step=2)["w"], rand(150_000, 2))
    finally:
        import fsspec

        fsspec.filesystem("memory").rm(uri.split("://")[1], recursive=True)


def test_make_room_needs_a_policy(tmp_path, monkeypatch):
    store = Store(tmp_path / "s", on_low_space="make_room")
    store.save({"w": rand(1000, 0)}, step=0)
    monkeypatch.setattr(store.backend, "free_bytes", lambda: 1000)
    with pytest.raises(InsufficientSpaceError, match="no retention policy"):
        store.save({"w": rand(100_000, 1)}, step=1)


# -- a real small filesystem ------------------------------------------------------------------
def _run(*cmd: str) -> bool:
    try:
        return subprocess.run(list(cmd), capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def small_fs(tmp_path):
    """A 20 MiB filesystem: tmpfs, else a loop-mounted ext4 image; skipped when neither mounts."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = _run("mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt))
    if not mounted and shutil.which("mkfs.ext4"):
        img = tmp_path / "small.img"
        with open(img, "wb") as f:
            f.truncate(24 * MiB)
        mounted = _run("mkfs.ext4", "-q", "-m", "0", str(img)) and _run("mount", "-o", "loop", str(img), str(mnt))
    if not mounted:
        pytest.skip("cannot mount a small filesystem here (needs root: mount -t tmpfs, or a loop device)")
    try:
        yield mnt
    finally:
        if not _run("umount", str(mnt)):
            _run("umount", "-l", str(mnt))


def test_real_enospc_mid_write_leaves_the_store_consistent(small_fs):
    root = small_fs / "store"
    # no guard: let the disk really fill up; 1 MiB chunks, so part of a save lands before ENOSPC
    store = Store(root, on_low_space="ignore", chunk_size=1 * MiB)
    saved = []
    with pytest.raises(InsufficientSpaceError) as ei:
        for i in range(10):
            store.save({"w": rand(5 * MiB // 4, i)}, step=i)  # 5 MiB of incompressible data
            saved.append(i)
    assert 2 <= len(saved) < 10
    msg = str(ei.value)
    assert "filled up during the save" in msg and "earlier checkpoints are intact" in msg
    again = Store(root)
    assert [c.step for c in again.list()] == saved
    for i in saved:
        again.verify(step=i, read_data=True)
        assert torch.equal(again.load(step=i)["w"], rand(5 * MiB // 4, i))
    assert object_digests(root) == referenced(again)
    assert not [k for k in files(root) if ".tmp-" in k]
    assert not os.listdir(root / "locks")
    # after removing checkpoints the next save fits again
    again.gc(Retention(keep_last=1))
    again.save({"w": rand(5 * MiB // 4, 99)}, step=99)
    assert torch.equal(Store(root).load()["w"], rand(5 * MiB // 4, 99))


def test_guard_fails_before_writing_on_a_full_disk(small_fs):
    root = small_fs / "store"
    store = Store(root, retention=Retention(keep_last=4))
    with pytest.raises(InsufficientSpaceError, match="not enough space to save step 4") as ei:
        for i in range(10):
            store.save({"w": rand(int(4.5 * MiB) // 4, i)}, step=i)
            before = files(root)
    assert ei.value.free < ei.value.needed
    assert files(root) == before
    assert [c.step for c in store.list()] == [0, 1, 2, 3]


def test_make_room_applies_retention_before_the_save(small_fs):
    root = small_fs / "store"
    store = Store(root, retention=Retention(keep_last=4), on_low_space="make_room")
    for i in range(8):
        store.save({"w": rand(int(4.5 * MiB) // 4, i)}, step=i)
    assert [c.step for c in store.list()] == [4, 5, 6, 7]
    for i in (4, 5, 6, 7):
        assert torch.equal(store.load(step=i)["w"], rand(int(4.5 * MiB) // 4, i))
    assert object_digests(root) == referenced(store)


def test_public_names():
    assert ckptstore.InsufficientSpaceError is InsufficientSpaceError
    assert issubclass(InsufficientSpaceError, ckptstore.CkptstoreError)
