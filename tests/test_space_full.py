"""A disk that fills up (or a quota that runs out) while a save writes: nothing is left behind,
even when not one more byte fits, and a retry counts what is already on disk as free."""

from __future__ import annotations

import errno
import os
import types
from typing import Any

import pytest
import torch

from ckptstore import InsufficientSpaceError, Store
from ckptstore.format._layout import parse_object_key
from ckptstore.storage import _local

MiB = 1 << 20


def rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def object_files(root) -> set[str]:
    out = set()
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root).replace(os.sep, "/")
            d = parse_object_key(rel)
            if d is not None:
                out.add(d)
    return out


def referenced(store: Store) -> set[str]:
    return {k for i in store.list() for k in store.manifest(id=i.id).objects}


def temp_files(root) -> list[str]:
    return [n for _d, _s, names in os.walk(root) for n in names if ".tmp-" in n]


class FillingDisk:
    """``os`` for the local backend: the disk fills up as the manifest is written, and from then
    on no new file can be created (not even a small lease file). Deleting still works."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.full = False
        self.manifest_fds: set[int] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _error(self) -> OSError:
        return OSError(self.code, os.strerror(self.code))

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if self.full and flags & os.O_CREAT:
            raise self._error()
        fd = os.open(path, flags, mode, **kw)
        if f"{os.sep}manifests{os.sep}" in os.fspath(path):
            self.manifest_fds.add(fd)
        return fd

    def write(self, fd: int, data: Any) -> int:
        if fd in self.manifest_fds:
            self.full = True
            raise self._error()
        return os.write(fd, data)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_a_disk_that_fills_during_the_manifest_write_keeps_nothing_of_the_save(tmp_path, monkeypatch, code):
    root = tmp_path / "s"
    store = Store(root, on_low_space="ignore")
    store.save({"w": rand(MiB // 4, 0)}, step=0)
    before = object_files(root)
    disk = FillingDisk(code)
    monkeypatch.setattr(_local, "os", disk)
    with pytest.raises(InsufficientSpaceError) as ei:
        store.save({"w": rand(MiB // 4, 1), "b": rand(1000, 2)}, step=1)
    assert disk.full
    msg = str(ei.value)
    assert "filled up during the save" in msg and "were removed again" in msg
    assert isinstance(ei.value, OSError) and ei.value.errno == errno.ENOSPC
    monkeypatch.setattr(_local, "os", os)
    again = Store(root)
    assert [i.step for i in again.list()] == [0]
    assert object_files(root) == before == referenced(again)  # the space is usable again at once
    assert not temp_files(root)
    assert not os.listdir(root / "locks")


def test_a_retry_counts_objects_already_on_disk_as_free(tmp_path, monkeypatch):
    root = tmp_path / "s"
    store = Store(root)
    state = {"w": rand(MiB, 3)}  # 4 MiB, one object
    with store.session() as s:  # a save that wrote its objects and then stopped before its manifest
        s.stage(state)
    assert len(object_files(root)) == 1 and not store.list()
    monkeypatch.setattr(store.backend, "free_bytes", lambda: 400_000)  # room for a manifest, not 4 MiB
    store.save(state, step=7)
    assert torch.equal(Store(root).load(7)["w"], state["w"])
    assert len(object_files(root)) == 1


def test_free_space_is_what_an_unprivileged_writer_may_use(tmp_path, monkeypatch):
    """statvfs f_bavail (blocks for unprivileged users), not f_bfree (which counts root's reserve)."""
    real = os.statvfs(tmp_path)
    fake = types.SimpleNamespace(f_bavail=10, f_bfree=1000, f_frsize=4096, f_bsize=4096, f_blocks=real.f_blocks)
    monkeypatch.setattr(_local.os, "statvfs", lambda p: fake)
    assert Store(tmp_path / "s").backend.free_bytes() == 10 * 4096


def test_a_failed_save_removes_exactly_the_objects_it_wrote(tmp_path, monkeypatch):
    """Not every young unreferenced object: another save's (or a copy's) are left to gc."""
    root = tmp_path / "s"
    store = Store(root, on_low_space="ignore")
    store.save({"w": rand(MiB // 4, 0)}, step=0)
    stranger = "ab" + "0" * 62  # an object some other writer put there a moment ago
    (root / "objects" / "ab").mkdir(parents=True, exist_ok=True)
    (root / "objects" / "ab" / stranger).write_bytes(b"x" * 100)
    before = object_files(root)
    monkeypatch.setattr(_local, "os", FillingDisk(errno.ENOSPC))
    with pytest.raises(InsufficientSpaceError, match="were removed again"):
        store.save({"w": rand(MiB // 4, 1)}, step=1)
    monkeypatch.setattr(_local, "os", os)
    assert object_files(root) == before
