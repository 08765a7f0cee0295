"""The save and load pipeline: every path (compressed, chunked, packed, zero-copy, staged) gives
back exactly what was saved, damage is found, and nothing half-written is left behind."""

from __future__ import annotations

import os
import sys
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import ckptstore
from ckptstore import IntegrityError, ObjectMissingError, Store
from ckptstore.format._layout import object_key
from ckptstore.pipeline import _mmap, _reader, _writer
from ckptstore.pipeline._buffers import ByteBudget, Staging, copy_many_to_host

SMALL_CHUNK = 64 << 10
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mappings are checked in /proc")


def _state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 500, generator=g) * 0.02  # 600 KB: several 64 KiB chunks
    s: dict[str, Any] = {
        "w": w,
        "tied": w[:10],  # shares w's storage
        "t": w.t(),  # a non-contiguous view of it
        "bias": torch.randn(10, generator=g),
        "half": torch.randn(50_001, generator=g).half(),
        "bf16": (torch.randn(777, 333, generator=g) * 0.02).bfloat16(),
        "f64": torch.randn(40_000, generator=g, dtype=torch.float64),
        "c64": torch.randn(100, 100, generator=g, dtype=torch.complex64),
        "c128": torch.randn(7, dtype=torch.complex128, generator=g),
        "f8": torch.randn(10_001, generator=g).to(torch.float8_e4m3fn),
        "f8b": torch.randn(333, generator=g).to(torch.float8_e5m2),
        "i64": torch.arange(100_000),
        "i8": torch.randint(-100, 100, (4097,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (3,), generator=g, dtype=torch.uint8),
        "bool": torch.rand(1001, generator=g) > 0.5,
        "odd": torch.randn(1001, generator=g).half()[1:],  # storage offset 1 element
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 5),
        "np": np.arange(10, dtype=np.float32),
        "np_c": np.arange(6, dtype=np.complex64),
    }
    return s


def _assert_same(out: dict[str, Any], state: dict[str, Any]) -> None:
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert out[k].dtype == v.dtype and out[k].shape == v.shape, k
            assert torch.equal(
                out[k].view(torch.uint8) if v.dtype.itemsize == 1 and v.is_floating_point() else out[k],
                v.view(torch.uint8) if v.dtype.itemsize == 1 and v.is_floating_point() else v,
            ), k
        else:
            assert np.array_equal(out[k], v) and out[k].dtype == v.dtype, k
    assert out["tied"].untyped_storage().data_ptr() == out["w"].untyped_storage().data_ptr()
    assert out["t"].stride() == state["t"].stride()


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("chunk_size", [SMALL_CHUNK, 32 << 20])
def test_round_trip_every_path(tmp_path: Path, compression: str | None, chunk_size: int) -> None:
    state = _state()
    store = Store(tmp_path / "s", compression=compression, chunk_size=chunk_size)
    store.save(state)
    for mmap in (None, True, False):
        for verify in (True, False):
            _assert_same(store.load(mmap=mmap, verify=verify), state)
    m = store.manifest()
    codecs = {o.codec for o in m.objects.values()}
    if compression is None:
        assert codecs == {"none"}
    else:
        assert {"zstd-bg2", "blosc-zstd-bg4"} <= codecs  # bf16/half and float32 planes
    if chunk_size == SMALL_CHUNK:
        assert max(len(b.segments) for b in m.blobs) > 1  # large blobs were chunked


def test_memory_backend_round_trip() -> None:
    """Not a local path: objects go through Backend.write / read, no mapping."""
    state = _state()
    uri = f"memory://pipeline-{os.getpid()}"
    for compression in (None, "zstd"):
        store = Store(uri, compression=compression, chunk_size=SMALL_CHUNK)
        store.save(state)
        _assert_same(store.load(), state)
        _assert_same(store.load(mmap=True), state)  # no local path: falls back to reading


def test_compressed_objects_name_their_codec_per_dtype(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    state = {
        "f32": torch.randn(600_000, generator=g) * 0.02,
        "bf16": (torch.randn(600_000, generator=g) * 0.02).bfloat16(),
        "i64": torch.arange(300_000),
        "mask": torch.zeros(2_000_000, dtype=torch.bool),
        "noise": torch.randint(0, 256, (9_000_000,), dtype=torch.uint8, generator=g),
    }  # own objects
    info = ckptstore.save(state, tmp_path, compression="zstd")
    m = Store(tmp_path).manifest()
    by_tensor = {}
    for name, e in zip(state, m.tensors):
        by_tensor[name] = {m.objects[s.object].codec for s in m.blobs[e.blob].segments}
    assert by_tensor == {
        "f32": {"blosc-zstd-bg4"},
        "bf16": {"zstd-bg2"},
        "i64": {"blosc-zstd-bg8"},
        "mask": {"zstd"},
        "noise": {"none"},
    }  # random bytes do not compress: stored raw
    assert info.stored_bytes < info.size
    for key, o in m.objects.items():
        if o.codec != "none":
            assert o.raw_hash is not None and o.raw_hash != key
            assert o.size < o.raw_size


def test_small_tensors_share_packs_by_dtype_width(tmp_path: Path) -> None:
    state = {f"a{i}": torch.full((100 + i,), float(i)) for i in range(20)}
    state.update({f"b{i}": torch.full((50 + i,), float(i), dtype=torch.bfloat16) for i in range(20)})
    state["same1"] = torch.ones(1000)
    state["same2"] = torch.ones(1000)
    store = Store(tmp_path, compression="zstd")
    store.save(state)
    m = store.manifest()
    objs = {name: m.blobs[e.blob].segments[0].object for name, e in zip(state, m.tensors)}
    assert len({objs[f"a{i}"] for i in range(20)}) == 1
    assert len({objs[f"b{i}"] for i in range(20)}) == 1
    assert objs["a0"] != objs["b0"]  # float32 and bf16 packs are separate (each compresses by its planes)
    assert m.objects[objs["a0"]].codec == "blosc-zstd-bg4" and m.objects[objs["b0"]].codec == "zstd-bg2"
    segs = [m.blobs[e.blob].segments[0] for e in m.tensors]
    assert all(s.offset % 64 == 0 for s in segs)
    e1, e2 = m.tensors[-2], m.tensors[-1]
    assert m.blobs[e1.blob].segments == m.blobs[e2.blob].segments  # identical bytes stored once
    _assert_loads(store, state)


def _assert_loads(store: Store, state: dict[str, Any], **kw: Any) -> None:
    out = store.load(**kw)
    for k, v in state.items():
        assert torch.equal(out[k], v), k


def test_resave_writes_only_what_changed(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    state = {f"big{i}": torch.randn(200_000, generator=g) for i in range(8)}
    state.update({f"small{i}": torch.randn(1000, generator=g) for i in range(30)})
    store = Store(tmp_path, chunk_size=SMALL_CHUNK)
    first = store.save(state)
    original = state["big1"].clone()
    state["big1"].add_(1.0)
    state["small7"].add_(1.0)
    second = Store(tmp_path, chunk_size=SMALL_CHUNK).save(state)  # a new process: index from the manifest
    changed = state["big1"].nbytes + state["small7"].nbytes
    assert changed <= second.new_bytes <= changed + 128
    assert first.new_bytes > 7 * second.new_bytes
    _assert_loads(Store(tmp_path), state)
    first_state = Store(tmp_path).load(step=first.step)
    assert torch.equal(first_state["big1"], original)


@linux_only
def test_zero_copy_load_maps_object_files(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    state = {"big": torch.randn(100_000, generator=g), "small": torch.randn(100, generator=g)}
    store = Store(tmp_path, chunk_size=SMALL_CHUNK)  # big spans several chunk files: stitched
    store.save(state)
    m = store.manifest()
    out = store.load(mmap=True)
    assert torch.equal(out["big"], state["big"]) and torch.equal(out["small"], state["small"])
    maps = Path("/proc/self/maps").read_text()
    objects = {str(tmp_path / object_key(s.object)) for b in m.blobs for s in b.segments}
    assert len(objects) > 2
    for path in objects:
        assert path in maps  # each object file is mapped
    # copy-on-write: writing to a loaded tensor never reaches the store
    before = {p: Path(p).read_bytes() for p in objects}
    out["big"].add_(1.0)
    out["small"].zero_()
    assert all(Path(p).read_bytes() == b for p, b in before.items())
    store.verify()
    del out
    import gc

    gc.collect()
    maps = Path("/proc/self/maps").read_text()
    assert not any(p in maps for p in objects)  # unmapped when the tensors are gone


def _corrupt(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("mmap", [None, True, False])
def test_a_corrupted_object_is_detected(tmp_path: Path, compression: str | None, mmap: bool | None) -> None:
    g = torch.Generator().manual_seed(0)
    state = {"big": torch.randn(100_000, generator=g) * 0.02, "small": torch.randn(100, generator=g)}
    store = Store(tmp_path, compression=compression, chunk_size=SMALL_CHUNK)
    store.save(state)
    m = store.manifest()
    seg = m.blobs[m.tensors[0].blob].segments[1]
    _corrupt(tmp_path / object_key(seg.object))
    with pytest.raises(IntegrityError, match="does not match its hash"):
        Store(tmp_path).load(mmap=mmap)
    with pytest.raises(IntegrityError):
        Store(tmp_path).verify()
    if compression is None:
        # the documented opt-out: no hashing, so the damage is not seen
        out = Store(tmp_path).load(mmap=mmap, verify=False)
        assert not torch.equal(out["big"], state["big"])


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_and_missing_objects(tmp_path: Path, mmap: bool) -> None:
    state = {"big": torch.randn(100_000), "small": torch.randn(100)}
    store = Store(tmp_path, chunk_size=SMALL_CHUNK)
    store.save(state)
    m = store.manifest()
    first, second = m.blobs[m.tensors[0].blob].segments[:2]
    p = tmp_path / object_key(first.object)
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(IntegrityError, match="truncated"):
        Store(tmp_path).load(mmap=mmap, verify=False)
    (tmp_path / object_key(second.object)).unlink()
    p.unlink()
    with pytest.raises(ObjectMissingError, match="missing"):
        Store(tmp_path).load(mmap=mmap)


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_no_temporary_files_after_save(tmp_path: Path) -> None:
    ckptstore.save(_state(), tmp_path, compression="zstd")
    ckptstore.save(_state(), tmp_path)
    assert _temp_files(tmp_path) == []


def test_failed_save_leaves_no_temporary_files_and_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path, chunk_size=SMALL_CHUNK)
    calls = {"n": 0}
    real = _writer.LocalSink.put

    def failing(self: Any, key: str, parts: Any, force: bool = False) -> bool:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(28, "No space left on device")
        return real(self, key, parts, force)

    monkeypatch.setattr(_writer.LocalSink, "put", failing)
    with pytest.raises(OSError):
        store.save({"w": torch.randn(200_000)})
    assert _temp_files(tmp_path) == []
    assert Store(tmp_path).list() == []


def test_objects_are_durable_names_only_after_finish(tmp_path: Path) -> None:
    """Until finish(), a sink's objects exist only as temporary files."""
    from ckptstore.pipeline._objwrite import LocalSink
    from ckptstore.storage._local import LocalBackend

    sink = LocalSink(LocalBackend(str(tmp_path)))
    key = object_key("ab" * 32)
    assert sink.put(key, [np.arange(10, dtype=np.uint8), b"xyz"])
    assert not (tmp_path / key).exists() and len(_temp_files(tmp_path)) == 1
    sink.finish()
    assert (tmp_path / key).read_bytes() == bytes(range(10)) + b"xyz"
    assert _temp_files(tmp_path) == []
    assert not sink.put(key, [b"other"])  # an existing object is not rewritten


def test_staging_path_for_accelerator_tensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CUDA tensors are copied through reusable (pinned when CUDA exists) staging buffers, on
    save and load. Without a GPU, CPU tensors are sent down the same code paths."""
    monkeypatch.setattr(_writer, "is_accelerator", lambda t: isinstance(t, torch.Tensor))
    state = _state()
    store = Store(tmp_path, chunk_size=SMALL_CHUNK)
    store.save(state)
    monkeypatch.setattr(_reader, "_on_host", lambda t: False)
    store2 = Store(tmp_path, chunk_size=SMALL_CHUNK)
    _assert_same(store2.load(mmap=False), state)


def test_staging_pool_reuses_buffers() -> None:
    st = Staging(1024, count=2, pin=False)
    a, b = st.acquire(), st.acquire()
    got: list[torch.Tensor] = []
    t = threading.Thread(target=lambda: got.append(st.acquire()))
    t.start()
    t.join(0.2)
    assert t.is_alive()  # both buffers are out: the third acquire waits
    st.release(a)
    t.join(5)
    assert got and got[0].data_ptr() == a.data_ptr()
    views = copy_many_to_host([torch.arange(5, dtype=torch.uint8), torch.arange(3, dtype=torch.uint8)], b)
    assert [v.tolist() for v in views] == [[0, 1, 2, 3, 4], [0, 1, 2]]


def test_byte_budget() -> None:
    b = ByteBudget(100)
    assert b.acquire(80) == 80
    blocked = threading.Event()
    done = threading.Event()

    def take() -> None:
        blocked.set()
        b.acquire(50)
        done.set()

    th = threading.Thread(target=take)
    th.start()
    blocked.wait()
    assert not done.wait(0.2)
    b.release(80)
    assert done.wait(5)
    b.release(50)
    assert b.acquire(500) == 500  # larger than the limit: allowed when nothing else is held
    th.join()


def test_compressed_save_buffers_stay_bounded(tmp_path: Path) -> None:
    """Compression works chunk by chunk under a byte budget: no whole-checkpoint buffer."""
    g = torch.Generator().manual_seed(0)
    state = {f"w{i}": torch.randn(2_000_000, generator=g) * 0.02 for i in range(8)}  # 64 MB
    total = sum(t.nbytes for t in state.values())
    tracemalloc.start()
    try:
        ckptstore.save(state, tmp_path, compression="zstd")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * total, peak  # numpy buffers are traced; the budget is ~max(10 MB, 5%)
    out = ckptstore.load(tmp_path, mmap=False)
    assert all(torch.equal(out[k], v) for k, v in state.items())


@linux_only
def test_mmap_default_only_on_local_filesystems(tmp_path: Path) -> None:
    assert _mmap.mmap_default(str(tmp_path)) == (_mmap._fs_type(str(tmp_path)) in _mmap._LOCAL_FS)
    assert _mmap._fs_type("/proc") == "proc"
    assert not _mmap.mmap_default(str(tmp_path / "missing"))


def test_effective_chunking() -> None:
    assert _writer.effective_chunking("none", 32 << 20, 8 << 20, 32 << 20) == (32 << 20, 8 << 20, 32 << 20)
    assert _writer.effective_chunking("zstd", 32 << 20, 8 << 20, 32 << 20) == (4 << 20, 4 << 20, 4 << 20)
    assert _writer.effective_chunking("none", 100_000, 1 << 20, 16 << 20) == (98304, 98304, 98304)


def test_views_of_one_storage_with_different_dtypes(tmp_path: Path) -> None:
    """One blob, tensors that disagree on the element width: plain zstd, bytes intact."""
    x = torch.randn(600_000) * 0.02
    state = {"f": x, "bytes": x.view(torch.uint8)[1:4_000_001], "h": x.view(torch.float16)[2:]}
    store = Store(tmp_path, compression="zstd")
    store.save(state)
    m = store.manifest()
    assert len(m.blobs) == 1
    assert {m.objects[s.object].codec for s in m.blobs[0].segments} <= {"zstd", "none"}
    out = store.load()
    assert torch.equal(out["f"], x) and torch.equal(out["bytes"], state["bytes"])
    assert torch.equal(out["h"].view(torch.int16), state["h"].view(torch.int16))  # (NaN bit patterns)
    assert out["bytes"].untyped_storage().data_ptr() == out["f"].untyped_storage().data_ptr()


def _cached_pages(path: Path) -> int:
    """How many of a file's pages are in the page cache (Linux ``mincore`` over a mapping that
    is never touched, so mapping it caches nothing)."""
    import ctypes
    import mmap as _mmap

    size = path.stat().st_size
    pages = -(-size // _mmap.PAGESIZE)
    with open(path, "rb") as f:
        mm = _mmap.mmap(f.fileno(), size, access=_mmap.ACCESS_COPY)
    anchor = ctypes.c_char.from_buffer(mm)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(ctypes.addressof(anchor), size, vec) == 0, ctypes.get_errno()
        return sum(v & 1 for v in vec)
    finally:
        del anchor
        mm.close()


def _object_files(root: Path) -> list[Path]:
    return [p for p in (root / "objects").rglob("*") if p.is_file() and not p.name.startswith(".")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="direct I/O and mincore: Linux")
def test_large_objects_are_written_past_the_page_cache(tmp_path: Path) -> None:
    """On a filesystem with direct I/O, a save's large objects reach the disk without filling
    the page cache (no page-cache copy, no writeback work for the kernel), and load back exactly."""
    from ckptstore.pipeline._objwrite import DIRECT_MIN

    state = {"w": torch.randn(3 * DIRECT_MIN // 4 + 1001), "b": torch.randn(10)}  # ~3 MiB, not whole pages
    store = Store(tmp_path)
    store.save(state, step=1)
    big = [p for p in _object_files(tmp_path) if p.stat().st_size >= DIRECT_MIN]
    assert big and all(p.stat().st_size % 4096 for p in big)  # cut back to the exact size
    assert sum(_cached_pages(p) for p in big) <= len(big)  # at most the tail page of each is cached
    out = Store(tmp_path).load()
    assert out.keys() == state.keys() and all(torch.equal(out[k], v) for k, v in state.items())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="direct I/O: Linux")
def test_refused_direct_io_falls_back_to_ordinary_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A filesystem that accepts ``O_DIRECT`` at open but refuses the writes (``EINVAL``, as some
    network and FUSE filesystems do) gets the object written the ordinary way, and the sink
    stops trying direct I/O."""
    import errno
    import fcntl

    from ckptstore.pipeline._objwrite import DIRECT_MIN, LocalSink
    from ckptstore.storage._local import LocalBackend

    real = os.pwrite
    refused = []

    def pwrite(fd: int, data: Any, offset: int) -> int:  # the refusal a real filesystem gives
        if os.O_DIRECT & fcntl.fcntl(fd, fcntl.F_GETFL):
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    sink = LocalSink(LocalBackend(str(tmp_path)))
    data = np.random.default_rng(0).integers(0, 256, 2 * DIRECT_MIN + 3, dtype=np.uint8)
    key = object_key("cd" * 32)
    assert sink.put(key, [data[:10], data[10:]])
    assert refused and not sink.direct
    sink.finish()
    assert (tmp_path / key).read_bytes() == data.tobytes()
    assert _temp_files(tmp_path) == []


def test_the_first_save_makes_every_fan_out_folder_so_later_saves_make_none(tmp_path: Path) -> None:
    """A new ``objects/xx`` folder costs an fsync of ``objects/`` in the save that makes it; all
    256 are made with the store's first objects, so later saves (a small save's fixed cost is
    mostly fsyncs) never pay it."""
    import ckptstore

    root = tmp_path / "s"
    ckptstore.save({"w": torch.ones(4)}, str(root), step=0)
    folders = sorted(os.listdir(root / "objects"))
    assert folders == [f"{i:02x}" for i in range(256)]
    made: list[str] = []
    real = os.mkdir

    def spy(path: Any, *a: Any, **k: Any) -> None:
        made.append(str(path))
        real(path, *a, **k)

    os.mkdir = spy  # type: ignore[assignment]
    try:
        for step in range(1, 20):
            ckptstore.save({"w": torch.full((4,), float(step))}, str(root), step=step)
    finally:
        os.mkdir = real  # type: ignore[assignment]
    assert not [p for p in made if "objects" in p], made
    assert [i.step for i in ckptstore.list_checkpoints(str(root))] == list(range(20))
