"""The contract of ``Backend`` itself: bytes at keys, ranges, listing, deletion, create-only
writes that never lose data, uploads in parts, modification times, and honest capability flags."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from ..format import _hashing
from ..format._layout import object_key
from ..storage._backend import Backend
from ._base import ContractBase


class KeyContract(ContractBase):
    def test_capability_flags_are_consistent(self, backend: Backend) -> None:
        for flag in (
            "supports_create_only",
            "trusts_existing_objects",
            "supports_multipart",
            "supports_mtime",
            "supports_local_writes",
            "supports_zero_copy",
        ):
            assert isinstance(getattr(backend, flag), bool), f"{type(backend).__name__}.{flag} must be a bool"
        if backend.supports_local_writes:
            assert backend.local_path(object_key("ab" * 32)) is not None, (
                "supports_local_writes needs local_path() to name the object files"
            )
        assert backend.part_size is None or (isinstance(backend.part_size, int) and backend.part_size > 0)
        assert isinstance(backend.parallel_transfers, int) and backend.parallel_transfers >= 1

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

    def test_write_parts_stores_their_concatenation(self, backend: Backend) -> None:
        rng = np.random.default_rng(3)
        parts: list[Any] = [rng.integers(0, 256, n, dtype=np.uint8) for n in (1000, 0, 64, 70001)]
        parts.append(memoryview(b"tail bytes"))
        whole = b"".join(memoryview(p).cast("B") for p in parts)
        key = object_key(_hashing.digest(whole))
        assert backend.write_parts(key, parts, if_absent=True) is True
        assert backend.read(key) == whole
        assert backend.write_parts(key, parts, if_absent=True) in (False, True)  # identical bytes: never an error
        assert backend.write_parts("p/empty", []) is True
        assert backend.read("p/empty") == b""

    def test_read_into_fills_the_buffer_or_reports_the_size(self, backend: Backend) -> None:
        data = np.random.default_rng(4).integers(0, 256, 300_001, dtype=np.uint8).tobytes()
        backend.write("ri/obj", data)
        out = np.zeros(len(data), dtype=np.uint8)
        assert backend.read_into("ri/obj", out) == len(data)
        assert out.tobytes() == data
        view = bytearray(10)
        assert backend.read_into("ri/obj", view) == len(data)  # wrong size: reported, nothing more promised
        backend.write("ri/empty", b"")
        assert backend.read_into("ri/empty", bytearray()) == 0
        with pytest.raises(FileNotFoundError):
            backend.read_into("ri/missing", bytearray(5))

    def test_overwrite_replaces_the_bytes(self, backend: Backend) -> None:
        backend.write("k", b"first")
        backend.write("k", b"second, longer")
        assert backend.read("k") == b"second, longer"

    def test_missing_key_is_file_not_found(self, backend: Backend) -> None:
        with pytest.raises(FileNotFoundError):
            backend.read("nope/nothing")
        with pytest.raises(FileNotFoundError):
            backend.size("nope/nothing")
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
        if backend.supports_mtime:  # gc ages objects, temporary files and leases by it
            assert isinstance(t, float) and abs(t - time.time()) < self.CLOCK_SKEW, t
        else:
            assert t is None, "mtime() must return None when supports_mtime is False"

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

    def test_concurrent_create_only_writers_agree(self, backend: Backend) -> None:
        data = b"same content from every writer " * 100
        key = object_key(_hashing.digest(data))
        with ThreadPoolExecutor(max_workers=6) as pool:  # a writer's exception surfaces here
            results = list(pool.map(lambda _: backend.write(key, data, if_absent=True), range(6)))
        assert all(isinstance(r, bool) for r in results), results
        assert any(results)
        assert backend.read(key) == data

    def test_large_object_in_parts(self, backend: Backend) -> None:
        """An object over twice the part size; sent in parts where ``supports_multipart``."""
        if backend.supports_multipart:
            backend.part_size = self.PART_SIZE
        data = np.random.default_rng(0).integers(0, 256, 2 * self.PART_SIZE + 12345, dtype=np.uint8).tobytes()
        key = object_key(_hashing.digest(data))
        assert backend.write(key, data, if_absent=True) is True
        assert backend.read(key) == data
        assert backend.read_range(key, self.PART_SIZE - 10, 20) == data[self.PART_SIZE - 10 : self.PART_SIZE + 10]
        assert backend.write(key, data, if_absent=True) in (False, True)  # identical bytes: never an error
        other = data[::-1]
        backend.write("plain/key", data, if_absent=True)
        backend.write("plain/key", other, if_absent=True)
        enforced = self.ENFORCES_CREATE_ONLY and (self.ENFORCES_CREATE_ONLY_IN_PARTS or not backend.supports_multipart)
        assert backend.read("plain/key") == (data if enforced else other)
