"""Copying checkpoints between stores (``copy_checkpoints``, ``ckptstore cp``) and backup
mirrors (``Store(..., backup=...)``), across local, memory://, S3 (moto) and GCS (fake-gcs)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import ckptstore
from ckptstore.cli import main
from ckptstore.format._layout import OBJECTS_DIR, object_key

from . import cloudservers as cs
from .faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(120)


def _state(i: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(i)
    return {
        "frozen": torch.arange(50_000, dtype=torch.float32),  # the same in every checkpoint
        "w": torch.randn(200_000, generator=g),
        "i": i,
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return torch.equal(a["frozen"], b["frozen"]) and torch.equal(a["w"], b["w"]) and a["i"] == b["i"]


def _fill(uri: str, steps: list[int], **kw: Any) -> ckptstore.Store:
    s = ckptstore.Store(uri, **kw)
    for i in steps:
        s.save(_state(i), step=i)
    return s


def _objects(store: ckptstore.Store) -> set[str]:
    return {k.rsplit("/", 1)[1] for k in store.backend.list(OBJECTS_DIR)}


def test_copy_hops_across_every_backend_and_only_sends_what_is_missing(tmp_path: Any) -> None:
    src = _fill(str(tmp_path / "src"), [1, 2, 3])
    s3 = cs.new_s3_bucket(cs.shared("moto").url)
    gcs = cs.new_gcs_bucket(cs.shared("fake-gcs").url)
    hops = [
        (src.uri, {}),
        (f"memory://cp-{uuid.uuid4().hex[:8]}/x", {}),
        (s3.uri, s3.options),
        (gcs.uri, gcs.options),
        (str(tmp_path / "back"), {}),
    ]
    for (a, ao), (b, bo) in zip(hops, hops[1:]):
        first = ckptstore.copy_checkpoints(a, b, steps=[1], src_options=ao, dst_options=bo, retries=1)
        assert [i.step for i in first.copied] == [1] and first.objects_present == 0
        rest = ckptstore.copy_checkpoints(a, b, all=True, src_options=ao, dst_options=bo, retries=1)
        assert [i.step for i in rest.copied] == [2, 3] and [i.step for i in rest.present] == [1]
        assert rest.objects_present >= 1  # the frozen tensor's pack did not travel again
        assert rest.bytes_copied < 2 * first.bytes_copied
        again = ckptstore.copy_checkpoints(a, b, all=True, src_options=ao, dst_options=bo, retries=1)
        assert again.copied == () and again.objects_copied == 0 and len(again.present) == 3
    final = ckptstore.Store(hops[-1][0])
    assert [i.id for i in final.list()] == [i.id for i in src.list()]  # same manifests, same ids
    for i in (1, 2, 3):
        assert _same(final.load(i), _state(i))
    assert _objects(final) == _objects(src)


def test_copy_refuses_a_damaged_source_object_and_commits_nothing_for_it(tmp_path: Any) -> None:
    src = _fill(str(tmp_path / "src"), [1, 2])
    newest = src.manifest(2)
    own = [k for k in newest.objects if k not in src.manifest(1).objects]
    path = src.backend.local_path(f"objects/{own[0][:2]}/{own[0]}")
    data = bytearray(open(path, "rb").read())
    data[100] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))
    dst = str(tmp_path / "dst")
    with pytest.raises(ckptstore.IntegrityError, match="does not match its hash"):
        ckptstore.copy_checkpoints(src.uri, dst, all=True)
    assert [i.step for i in ckptstore.list_checkpoints(dst)] == []  # newest first: failed before any commit
    ok = ckptstore.copy_checkpoints(src.uri, dst, steps=[1])
    assert [i.step for i in ok.copied] == [1]


def test_interrupted_copy_leaves_dst_consistent_and_a_rerun_resumes(tmp_path: Any) -> None:
    src = _fill(str(tmp_path / "src"), [1, 2, 3])
    moto = cs.shared("moto")
    dst = cs.new_s3_bucket(moto.url)
    proxy = FaultProxy(cs.HOST, moto.port).start()
    try:
        puts = {"n": 0}

        def after_two_puts(req: Any) -> bool:
            if req.method == "PUT" and "/objects/" in req.path:
                puts["n"] += 1
                return puts["n"] > 2
            return False

        proxy.add("status_before", when=after_two_puts, times=None)
        with pytest.raises(ckptstore.StorageError):
            ckptstore.copy_checkpoints(
                src.uri, dst.uri, all=True, dst_options=dict(dst.options, endpoint_url=proxy.url), retries=0, workers=1
            )
    finally:
        proxy.stop()
    direct = ckptstore.Store(dst.uri, storage_options=dst.options, retries=1)
    partial = direct.list()
    for info in partial:  # whatever is listed is complete
        assert _same(direct.load(info.step), _state(info.step))
    landed = _objects(direct)
    assert landed  # something travelled before the fault
    rerun = ckptstore.copy_checkpoints(src.uri, direct, all=True)
    assert rerun.objects_copied == len(_objects(src) - landed)  # only what was missing
    assert [i.step for i in direct.list()] == [1, 2, 3]
    for i in (1, 2, 3):
        assert _same(direct.load(i), _state(i))


def test_cli_cp(tmp_path: Any, capsys: Any) -> None:
    src = _fill(str(tmp_path / "src"), [10, 20, 30])
    s3 = cs.new_s3_bucket(cs.shared("moto").url)
    opts = [f"--dst-option={k}={v}" for k, v in s3.options.items()]
    assert main(["cp", src.uri, s3.uri, "--latest", "2", "-q", *opts]) == 0
    out = capsys.readouterr().out
    assert "copied 2 checkpoint(s) (step 20, 30)" in out
    assert main(["cp", src.uri, s3.uri, "--step", "10", "20", "--json", "-q", *opts]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [c["step"] for c in res["copied"]] == [10] and [c["step"] for c in res["present"]] == [20]
    assert res["objects_present"] >= 1
    local = str(tmp_path / "dst")
    assert main(["cp", src.uri, local, "-q"]) == 0  # default: the newest only
    assert [i.step for i in ckptstore.list_checkpoints(local)] == [30]
    assert main(["cp", src.uri, local, "--step", "99"]) == 1
    assert "no checkpoint at step 99" in capsys.readouterr().err
    assert main(["cp", str(tmp_path / "missing"), local]) == 1
    assert main(["cp", src.uri, local, "--latest", "0"]) == 2  # usage error


# -- backup mirrors -------------------------------------------------------------------------------


def test_backup_mirror_has_its_own_retention(tmp_path: Any) -> None:
    s3 = cs.new_s3_bucket(cs.shared("moto").url)
    store = ckptstore.Store(
        str(tmp_path / "local"), backup=ckptstore.Backup(s3.uri, keep_last=2, storage_options=s3.options, retries=1)
    )
    for i in range(1, 5):
        store.save(_state(i), step=i)
    assert store.backup is not None and store.backup.flush(60)
    mirror = ckptstore.Store(s3.uri, storage_options=s3.options)
    assert [i.step for i in mirror.list()] == [3, 4]
    assert [i.step for i in store.list()] == [1, 2, 3, 4]
    assert _same(mirror.load(3), _state(3)) and _same(mirror.load(4), _state(4))
    assert store.backup.status.pending == () and store.backup.status.last_error is None
    store.close()


def test_failing_mirror_never_breaks_training_and_catches_up(tmp_path: Any) -> None:
    moto = cs.shared("moto")
    bucket = cs.new_s3_bucket(moto.url)
    proxy = FaultProxy(cs.HOST, moto.port).start()
    try:
        proxy.add("status_before", times=None)  # the backup endpoint is down
        backup = ckptstore.Backup(
            bucket.uri,
            keep_last=3,
            retries=0,
            retry_interval=0.2,
            storage_options=dict(bucket.options, endpoint_url=proxy.url),
        )
        store = ckptstore.Store(str(tmp_path / "local"), backup=backup)
        with pytest.warns(RuntimeWarning, match="backup to .* failed"):
            for i in range(1, 4):
                assert store.save(_state(i), step=i).step == i  # every save commits locally
            assert store.backup.flush(30) is False
        st = store.backup.status
        assert st.failures >= 1 and st.last_error and len(st.pending) >= 1
        assert [i.step for i in store.list()] == [1, 2, 3]
        proxy.reset()  # the endpoint is back
        assert store.backup.flush(60) is True
        mirror = ckptstore.Store(bucket.uri, storage_options=bucket.options)
        assert [i.step for i in mirror.list()] == [1, 2, 3]
        assert _same(mirror.load(3), _state(3))
        store.close()
    finally:
        proxy.stop()


def test_close_waits_for_the_backup(tmp_path: Any) -> None:
    drive = str(tmp_path / "drive")
    with ckptstore.Store(str(tmp_path / "local"), backup=drive) as store:
        store.save(_state(1), step=1)
    assert [i.step for i in ckptstore.list_checkpoints(drive)] == [1]


def test_reset_vm_restores_from_the_backup_and_keeps_deduplicating(tmp_path: Any) -> None:
    local, drive = str(tmp_path / "vm-disk"), str(tmp_path / "drive")
    backup = ckptstore.Backup(drive, keep_last=3)
    with ckptstore.Store(local, backup=backup) as store:
        for i in range(1, 6):
            store.save(_state(i), step=i)
    shutil.rmtree(local)  # the VM was reset: the local disk is empty, the Drive copy is not
    store = ckptstore.Store(local, backup=backup)
    with pytest.warns(RuntimeWarning, match="restored step\\(s\\) 5 from the backup"):
        latest = store.latest()
    assert latest is not None and latest.step == 5
    assert _same(store.load(), _state(5))
    info = store.save(_state(6), step=6)
    assert info.new_bytes <= info.size - _state(6)["frozen"].nbytes  # the frozen tensor was not rewritten
    store.close()
    assert [i.step for i in ckptstore.list_checkpoints(drive)] == [4, 5, 6]


def test_an_empty_backup_changes_nothing(tmp_path: Any) -> None:
    store = ckptstore.Store(str(tmp_path / "local"), backup=str(tmp_path / "drive"))
    with pytest.raises(ckptstore.StoreNotFoundError):
        store.list()
    assert not os.path.exists(tmp_path / "local")


def test_load_with_fallback(tmp_path: Any) -> None:
    drive = _fill(str(tmp_path / "drive"), [1, 2])
    primary = str(tmp_path / "gone")
    with pytest.warns(RuntimeWarning, match="loaded from the fallback"):
        assert _same(ckptstore.load(primary, fallback=drive.uri), _state(2))
    _fill(primary, [3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same(ckptstore.load(primary, fallback=drive.uri), _state(3))  # the primary has it
    with pytest.warns(RuntimeWarning, match="fallback"):
        assert _same(ckptstore.load(primary, step=1, fallback=drive.uri), _state(1))
    with pytest.raises(ckptstore.CheckpointNotFoundError):
        ckptstore.load(primary, step=7, fallback=drive.uri)


def test_bad_arguments_are_refused_early(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="keep_last"):
        ckptstore.Backup(str(tmp_path), keep_last=0)
    with pytest.raises(TypeError, match="backup must be"):
        ckptstore.Store(str(tmp_path / "s"), backup=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retries"):
        ckptstore.Store("memory://x/y", retries=-1)
    with pytest.raises(ValueError, match="latest"):
        ckptstore.copy_checkpoints(_fill(str(tmp_path / "a"), [1]).uri, str(tmp_path / "b"), latest=0)
    with pytest.raises(ckptstore.StoreNotFoundError):
        ckptstore.copy_checkpoints(str(tmp_path / "nothing"), str(tmp_path / "b"))
    empty = ckptstore.Store(str(tmp_path / "empty"))
    info = empty.save({"w": torch.ones(1)}, step=0)
    empty.forget(id=info.id)
    with pytest.raises(ckptstore.CheckpointNotFoundError, match="no checkpoints to copy"):
        ckptstore.copy_checkpoints(empty, str(tmp_path / "b"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_load_with_fallback_passes_mmap_on(tmp_path: Any) -> None:
    """``load(fallback=...)`` honours ``mmap`` like a plain load: mapped with True, read with False."""
    drive = str(tmp_path / "drive")
    big = torch.arange(400_000, dtype=torch.float32)  # over the pack threshold: one object of its own
    info = ckptstore.save({"big": big}, drive, step=1)
    path = str(Path(drive) / object_key(ckptstore.Store(drive).manifest(id=info.id).blobs[0].segments[0].object))
    for mmap in (False, True):  # False first: a mapping may outlive the tensors that used it
        with pytest.warns(ckptstore.BackupWarning, match="loaded from the fallback"):
            out = ckptstore.load(tmp_path / "gone", fallback=drive, mmap=mmap)
        assert torch.equal(out["big"], big)
        assert (path in Path("/proc/self/maps").read_text()) is mmap
