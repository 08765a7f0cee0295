"""The save pipeline's writes keep ``Backend.write``'s promises, whichever sink ``sink_for`` picks.

A save does not always call ``Backend.write``: where ``supports_local_writes`` is set, the
batched local writer (``LocalSink``) writes object files itself and fsyncs them together. These
tests drive the same calls through both paths (``via`` = ``write``: ``Backend.write`` and
``sync``; ``via`` = ``pipeline``: the sink a save gets, ``put`` and ``finish``) and through
``write_blobs`` itself, and hold them to one contract: objects land whole under their hash names,
``if_absent`` semantics, names durable once the writer returns and ``sync`` ran, and an
interrupted or failed save leaves only whole objects and temporary files that gc removes.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import numpy as np
import pytest
import torch

from ..format import _hashing
from ..format._layout import OBJECTS_DIR, is_temporary, object_key, parse_object_key
from ..format._tensors import PlannedBlob
from ..pipeline._codec import get_codec
from ..pipeline._objwrite import DIRECT_MIN, sink_for
from ..pipeline._writer import DedupIndex, WriteResult, write_blobs
from ..storage._backend import Backend
from ..store._store import Store
from . import _durability
from ._base import ContractBase

Put = Callable[..., bool]


def _random(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def _write_blobs(backend: Backend, blobs: list[Any], codec: str = "none") -> WriteResult:
    planned = [PlannedBlob(source=b, nbytes=len(b), device="cpu") for b in blobs]
    return write_blobs(
        backend,
        planned,
        codec=codec,
        index=DedupIndex(),
        chunk_size=64 << 10,
        pack_threshold=16 << 10,
        pack_size=64 << 10,
        workers=4,
    )


def _blobs() -> list[np.ndarray]:
    """Chunked blobs (one not a whole number of chunks), packs of small ones, a repeat, an empty one."""
    small = [_random(n, seed) for seed, n in enumerate((100, 3000, 9000, 15000, 777), start=10)]
    compressible = np.tile(np.arange(64, dtype=np.uint8), 3000)
    return [_random(300_000, 1), *small, np.zeros(0, dtype=np.uint8), small[1].copy(), compressible, _random(20_000, 2)]


def whole_object_problems(backend: Backend) -> list[str]:
    """Keys under objects/ that are neither a whole object under its hash name nor a temporary
    file on its way to one (in the grammar gc removes)."""
    out = []
    for key in backend.list(OBJECTS_DIR):
        digest = parse_object_key(key)
        if digest is not None:
            if _hashing.digest(backend.read(key)) != digest:
                out.append(f"{key}: its bytes do not match its name (torn or partial)")
        elif not is_temporary(key) or parse_object_key(_durability.final_name(key) or "") is None:
            out.append(f"{key}: neither an object nor a temporary file .<object>.tmp-<pid>-<hex>")
    return out


def temporaries(backend: Backend) -> list[str]:
    return [k for k in backend.list(OBJECTS_DIR) if is_temporary(k)]


class SinkContract(ContractBase):
    @pytest.fixture(params=["write", "pipeline"])
    def via(self, request: Any) -> str:
        return str(request.param)

    @pytest.fixture
    def put(self, backend: Backend, via: str) -> Put:
        """``put(key, data, if_absent=True) -> bool`` through ``via``, durable when it returns."""

        def put(key: str, data: bytes, if_absent: bool = True) -> bool:
            if via == "write":
                wrote = backend.write(key, data, if_absent=if_absent)
            else:
                sink = sink_for(backend, 2)
                try:
                    wrote = sink.put(key, [data], force=not if_absent)
                    sink.finish()
                except BaseException:
                    sink.abort()
                    raise
            backend.sync()
            return wrote

        return put

    def test_writers_agree_on_create_only(self, backend: Backend, put: Put) -> None:
        data = b"object bytes " * 100
        key = object_key(_hashing.digest(data))
        assert put(key, data) is True
        again = put(key, data)  # identical bytes: never an error
        assert again is False or not self.ENFORCES_CREATE_ONLY
        assert put(key, data, if_absent=False) is True  # a forced write always writes
        assert backend.read(key) == data
        assert put("plain/key", b"original") is True
        wrote = put("plain/key", b"other bytes")
        if self.ENFORCES_CREATE_ONLY:
            assert wrote is False and backend.read("plain/key") == b"original"
        assert put("plain/key", b"forced", if_absent=False) is True
        assert backend.read("plain/key") == b"forced"

    def test_writers_agree_on_a_damaged_object(self, backend: Backend, put: Put) -> None:
        """A damaged copy under a hash name: trusted (left, not read back) or detected and replaced,
        as ``trusts_existing_objects`` says; a forced write (the save's path for an object found
        damaged) replaces it either way."""
        data = b"the real bytes " * 100
        key = object_key(_hashing.digest(data))
        backend.write(key, b"bit rot")
        wrote = put(key, data)
        if backend.trusts_existing_objects:
            assert wrote is False and backend.read(key) == b"bit rot"
        else:
            assert wrote is True and backend.read(key) == data
        assert put(key, data, if_absent=False) is True
        assert backend.read(key) == data

    def test_names_are_durable_once_written(
        self, backend: Backend, target: Any, via: str, put: Put, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Seen by a new client at once; on a local disk, fsynced in the order of format.md §7."""
        datas = [_random(5000 + i, i).tobytes() for i in range(4)]
        keys = [object_key(_hashing.digest(d)) for d in datas]
        local = backend.local_path(keys[0]) is not None and _durability.available()
        with monkeypatch.context() as mp:
            log = _durability.SyscallLog().install(mp) if local else None
            if via == "write":
                for k, d in zip(keys, datas):
                    assert put(k, d) is True
            else:  # one batch, as a save writes them
                sink = sink_for(backend, 4)
                assert all(sink.put(k, [d[:100], d[100:]]) for k, d in zip(keys, datas))
                sink.finish()
                backend.sync()
        fresh = self.open_backend(target)
        assert [fresh.read(k) for k in keys] == datas
        assert temporaries(fresh) == []
        if log is not None:
            paths = [backend.local_path(k) for k in keys]
            assert _durability.durability_problems(log, paths) == []  # type: ignore[arg-type]

    def test_large_objects_arrive_intact(self, backend: Backend, target: Any, put: Put) -> None:
        """Objects above the local sink's direct-I/O threshold (several of its buffers, a size
        that is not a whole number of pages, given in parts) land byte for byte, as small ones do."""
        big = _random(2 * DIRECT_MIN + 12_345, 7).tobytes()
        key = object_key(_hashing.digest(big))
        assert put(key, big) is True
        assert backend.read(key) == big
        sink = sink_for(backend, 2, total=len(big))  # the pipeline's sink, the object in three parts
        other = big[::-1]
        okey = object_key(_hashing.digest(other))
        try:
            assert sink.put(okey, [other[:1000], other[1000 : DIRECT_MIN + 5], other[DIRECT_MIN + 5 :]]) is True
            sink.finish()
        except BaseException:
            sink.abort()
            raise
        backend.sync()
        assert self.open_backend(target).read(okey) == other
        assert temporaries(backend) == []

    # -- through write_blobs -------------------------------------------------------------------
    @pytest.mark.parametrize("codec", ["none", "zstd"])
    def test_pipeline_objects_land_whole_under_their_hash_names(self, backend: Backend, codec: str) -> None:
        blobs = _blobs()
        res = _write_blobs(backend, blobs, codec)
        assert sorted(backend.list(OBJECTS_DIR)) == sorted(object_key(k) for k in res.objects)  # nothing else
        assert whole_object_problems(backend) == []
        raw: dict[str, bytes] = {}
        for key, info in res.objects.items():
            stored = backend.read(object_key(key))
            assert len(stored) == info.size
            raw[key] = bytes(get_codec(info.codec).decode(stored, info.raw_size))
            assert _hashing.digest(raw[key]) == (info.raw_hash or key)
        for blob, src in zip(res.blobs, blobs):  # every blob reads back from its segments
            got = b"".join(raw[s.object][s.offset : s.offset + s.length] for s in blob.segments)
            assert got == src.tobytes() and blob.nbytes == len(src)
        if codec == "zstd":
            assert any(i.codec != "none" for i in res.objects.values())
        # the same bytes again, with no dedup index: every object is found in place, none rewritten
        again = _write_blobs(backend, blobs, codec)
        assert set(again.objects) == set(res.objects)
        assert again.new_objects == 0 or not self.ENFORCES_CREATE_ONLY
        assert whole_object_problems(backend) == [] and temporaries(backend) == []

    def test_failed_pipeline_leaves_only_whole_objects(self, backend: Backend) -> None:
        class Unreadable(np.ndarray):  # its bytes cannot be read: the save fails part-way
            def __getitem__(self, item: Any) -> Any:
                raise OSError(5, "Input/output error (injected by the contract suite)")

        bad = _random(200_000, 3).view(Unreadable)  # chunked: fails in a worker, after other writes
        blobs = _blobs()
        with pytest.raises(OSError, match="injected"):
            _write_blobs(backend, [*blobs[:3], bad, *blobs[3:]])
        assert whole_object_problems(backend) == []
        assert temporaries(backend) == []  # the sink's abort removed them

    def test_interrupted_save_leaves_what_gc_removes(self, backend: Backend, store: Store) -> None:
        """A process killed in the middle of a save (``finish`` never runs) leaves whole objects
        and temporary files in the grammar readers ignore; gc removes both once they are old."""
        state = {"w": torch.arange(50_000, dtype=torch.float32)}
        store.save(state, step=1)
        kept = set(backend.list(OBJECTS_DIR))
        sink = sink_for(backend, 2)
        for seed in range(3):
            d = _random(10_000, 100 + seed)
            sink.put(object_key(_hashing.digest(d)), [d])
        # ... the process dies here: no finish(), no abort()
        assert whole_object_problems(backend) == []
        temps = temporaries(backend)
        old = time.time() - 7200
        for k in temps:
            path = backend.local_path(k)
            if path is None:
                pytest.skip("temporary files without a local path cannot be aged here")
            os.utime(path, (old, old))
        if not backend.supports_mtime:
            pytest.skip("without modification times gc never ages leftovers (supports_mtime is False)")
        report = store.prune(grace=0)
        assert report.deleted_temp == len(temps), report
        assert set(backend.list(OBJECTS_DIR)) == kept  # the interrupted save's objects are gone too
        assert torch.equal(store.load(1)["w"], state["w"])
