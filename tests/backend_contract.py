"""The backend contract: one test class every backend passes (subclassed in test_backends.py).

A subclass provides a ``target`` fixture (a fresh, empty location: ``cloudservers.Target``) and
says whether the storage enforces create-only writes (``ENFORCES_CREATE_ONLY``; rclone's S3
server silently ignores ``If-None-Match``). Everything else must hold everywhere: the bytes
under a key, ranges, listing, deletion, create-only semantics that never lose data, and the full
save / load / list / forget cycle through ``ckptstore.Store``.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

import ckptstore
from ckptstore.format import _hashing
from ckptstore.storage._backend import Backend
from ckptstore.storage._open import open_backend
from ckptstore.format._layout import object_key


class BackendContract:
    ENFORCES_CREATE_ONLY = True
    #: whether create-only holds for uploads in parts too (fake-gcs-server ignores preconditions
    #: on resumable uploads; real GCS does not)
    ENFORCES_CREATE_ONLY_IN_PARTS = True
    #: the smallest part the protocol allows (S3: 5 MiB), for the multipart test
    PART_SIZE = 5 << 20

    @pytest.fixture
    def backend(self, target: Any) -> Backend:
        return open_backend(target.uri, target.options, retries=1)

    @pytest.fixture
    def store(self, target: Any) -> ckptstore.Store:
        return ckptstore.Store(target.uri, storage_options=target.options, retries=1, workers=4)

    # -- bytes at keys -----------------------------------------------------------------------
    def test_write_then_read_roundtrips_every_buffer_kind(self, backend: Backend) -> None:
        payload = bytes(range(256)) * 10
        assert backend.write("a/bytes", payload) is True
        backend.write("a/bytearray", bytearray(payload))
        backend.write("a/memoryview", memoryview(payload)[10:20])
        backend.write("a/empty", b"")
        backend.sync()
        assert backend.read("a/bytes") == payload
        assert backend.read("a/bytearray") == payload
        assert backend.read("a/memoryview") == payload[10:20]
        assert backend.read("a/empty") == b""

    def test_overwrite_replaces_the_bytes(self, backend: Backend) -> None:
        backend.write("k", b"first")
        backend.write("k", b"second, longer")
        assert backend.read("k") == b"second, longer"

    def test_missing_key_is_file_not_found(self, backend: Backend) -> None:
        with pytest.raises(FileNotFoundError):
            backend.read("nope/nothing")
        assert backend.exists("nope/nothing") is False

    def test_read_range(self, backend: Backend) -> None:
        data = bytes(range(200))
        backend.write("r/obj", data)
        assert backend.read_range("r/obj", 0, 10) == data[:10]
        assert backend.read_range("r/obj", 50, 25) == data[50:75]
        assert backend.read_range("r/obj", 190, 50) == data[190:]  # short at the end
        assert backend.read_range("r/obj", 7, 0) == b""
        with pytest.raises(ValueError):
            backend.read_range("r/obj", -1, 5)

    def test_list_is_recursive_relative_and_scoped(self, backend: Backend) -> None:
        keys = ["objects/ab/one", "objects/ab/two", "objects/cd/three", "manifests/m1", "top"]
        for k in keys:
            backend.write(k, k.encode())
        assert sorted(backend.list("objects")) == sorted(keys[:3])
        assert backend.list("manifests") == ["manifests/m1"]
        assert backend.list("nothing-here") == []
        assert sorted(backend.list("objects/ab")) == ["objects/ab/one", "objects/ab/two"]

    def test_delete(self, backend: Backend) -> None:
        backend.write("d/x", b"1")
        backend.write("d/y", b"2")
        backend.delete("d/x")
        backend.sync()
        assert not backend.exists("d/x")
        assert backend.read("d/y") == b"2"
        assert backend.list("d") == ["d/y"]
        backend.delete("d/x")  # already gone: not an error

    def test_exists_size_mtime(self, backend: Backend) -> None:
        backend.write("s/obj", b"x" * 1234)
        assert backend.exists("s/obj")
        assert backend.size("s/obj") == 1234
        t = backend.mtime("s/obj")
        assert t is None or t > 1.6e9

    # -- create-only -------------------------------------------------------------------------
    def test_create_only_never_clobbers_when_enforced(self, backend: Backend) -> None:
        assert backend.write("c/key", b"original", if_absent=True) is True
        again = backend.write("c/key", b"original", if_absent=True)  # same bytes: never an error
        wrote = backend.write("c/key", b"other bytes", if_absent=True)
        if self.ENFORCES_CREATE_ONLY:
            assert again is False and wrote is False
            assert backend.read("c/key") == b"original"
        else:  # the server ignores the precondition: the last writer wins, silently
            assert backend.read("c/key") == b"other bytes"

    def test_content_addressed_rewrite_keeps_identical_bytes(self, backend: Backend) -> None:
        data = b"chunk " * 1000
        key = object_key(_hashing.digest(data))
        backend.write(key, data, if_absent=True)
        backend.write(key, data, if_absent=True)
        backend.write(key, data)
        assert backend.read(key) == data
        assert _hashing.digest(backend.read(key)) == key.rsplit("/", 1)[1]

    def test_a_damaged_hash_named_object_is_replaced(self, backend: Backend) -> None:
        if not backend.create_only:
            pytest.skip("the local backend trusts an existing object (atomic renames cannot tear it)")
        data = b"the real bytes " * 100
        key = object_key(_hashing.digest(data))
        backend.write(key, b"bit rot")  # a damaged copy under the hash name
        assert backend.write(key, data, if_absent=True) is True  # refused, read back, replaced
        assert backend.read(key) == data

    def test_concurrent_create_only_writers_agree(self, backend: Backend) -> None:
        data = b"same content from every writer " * 100
        key = object_key(_hashing.digest(data))
        results: list[Any] = []

        def put() -> None:
            try:
                results.append(backend.write(key, data, if_absent=True))
            except Exception as e:  # pragma: no cover - reported below
                results.append(e)

        threads = [threading.Thread(target=put) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(isinstance(r, bool) for r in results), results
        assert any(results)
        assert backend.read(key) == data

    def test_large_object_in_parts(self, backend: Backend) -> None:
        if not hasattr(backend, "part_size"):
            pytest.skip("no multipart uploads on this backend")
        backend.part_size = self.PART_SIZE  # type: ignore[attr-defined]
        data = torch.randint(0, 256, (2 * self.PART_SIZE + 12345,), dtype=torch.uint8).numpy().tobytes()
        key = object_key(_hashing.digest(data))
        assert backend.write(key, data, if_absent=True) is True
        assert backend.read(key) == data
        assert backend.read_range(key, self.PART_SIZE - 10, 20) == data[self.PART_SIZE - 10 : self.PART_SIZE + 10]
        assert backend.write(key, data, if_absent=True) in (False, True)  # identical bytes: never an error
        other = data[::-1]
        backend.write("plain/key", data, if_absent=True)
        backend.write("plain/key", other, if_absent=True)
        expected = data if self.ENFORCES_CREATE_ONLY and self.ENFORCES_CREATE_ONLY_IN_PARTS else other
        assert backend.read("plain/key") == expected

    # -- the full cycle through Store ----------------------------------------------------------
    def test_store_save_load_list_forget_cycle(self, store: ckptstore.Store, target: Any) -> None:
        torch.manual_seed(0)
        frozen = torch.randn(256, 256)  # 256 KiB: packed; identical in every checkpoint
        big = torch.randn(600_000)  # 2.4 MB: its own object
        states = [{"frozen": frozen, "big": big + i, "step": i, "hist": [0.5 * i]} for i in range(3)]
        infos = [store.save(s, step=10 * i, metrics={"loss": 1.0 / (i + 1)}) for i, s in enumerate(states)]
        assert [i.step for i in store.list()] == [0, 10, 20]
        assert store.latest().id == infos[-1].id
        assert infos[1].new_bytes < infos[0].new_bytes  # the frozen tensor was not stored again
        for info, s in zip(infos, states):
            back = store.load(info.step)
            assert torch.equal(back["frozen"], s["frozen"]) and torch.equal(back["big"], s["big"])
            assert back["step"] == s["step"] and back["hist"] == s["hist"]
        assert store.info(id=infos[1].id[:10]).step == 10
        store.verify(10, read_data=True)
        store.forget(10)
        assert [i.step for i in store.list()] == [0, 20]
        with pytest.raises(ckptstore.CheckpointNotFoundError):
            store.load(10)
        assert torch.equal(store.load(20)["big"], states[2]["big"])
        again = ckptstore.Store(target.uri, storage_options=target.options, retries=1)
        assert [i.step for i in again.list()] == [0, 20]

    def test_store_reopened_sees_everything(self, target: Any) -> None:
        a = ckptstore.Store(target.uri, storage_options=target.options, retries=1)
        a.save({"w": torch.arange(10.0)}, step=1)
        b = ckptstore.Store(target.uri, storage_options=target.options, retries=1)
        assert [i.step for i in b.list()] == [1]
        assert torch.equal(b.load()["w"], torch.arange(10.0))
        assert b.exists()
