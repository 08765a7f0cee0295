"""Garbage collection on real local stores: what stays loads, space is freed, and a save in
another process running at the same time never loses an object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

import ckptstore
from ckptstore import Retention, Store
from ckptstore.format._layout import OBJECTS_DIR, object_key, parse_object_key
from ckptstore.store._locks import Lease, acquire_gc, read_locks


def objects_on_disk(root) -> dict[str, int]:
    out = {}
    for dirpath, _dirs, files in os.walk(os.path.join(root, OBJECTS_DIR)):
        for f in files:
            key = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
            out[key] = os.path.getsize(os.path.join(dirpath, f))
    return out


def referenced(store: Store) -> set[str]:
    keys = set()
    for info in store.list():
        keys.update(store.manifest(id=info.id).objects)
    return keys


def state(i: int, base: torch.Tensor) -> dict:
    g = torch.Generator().manual_seed(i)
    return {"base": base, "head": torch.randn(50_000, generator=g), "step": i}


@pytest.fixture
def base():
    return torch.randn(300_000, generator=torch.Generator().manual_seed(99))


def test_gc_frees_space_and_what_stays_loads(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    for i in range(6):
        store.save(state(i, base), step=i * 10, metrics={"loss": float(10 - i) if i != 1 else 0.1})
    before = objects_on_disk(root)
    report = store.gc(Retention(keep_last=2, keep_best=("loss", "min")))
    after = objects_on_disk(root)
    assert [i.step for i in store.list()] == [10, 40, 50]
    assert [i.step for i in report.removed] == [0, 20, 30]
    # freed bytes are exactly what left the disk
    assert report.freed_bytes == sum(before.values()) - sum(after.values()) > 0
    assert report.deleted_objects == len(before) - len(after) > 0
    # nothing unreferenced is left, nothing referenced is missing
    assert {parse_object_key(k) for k in after} == referenced(store)
    for i in (1, 4, 5):
        got = store.load(step=i * 10)
        assert torch.equal(got["base"], base) and torch.equal(got["head"], state(i, base)["head"])
    # a fresh Store (another process) sees the same
    again = Store(root)
    for info in again.list():
        again.verify(id=info.id, read_data=True)


def test_dry_run_changes_nothing_and_predicts(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    for i in range(4):
        store.save(state(i, base), step=i)
    before = objects_on_disk(root)
    dry = store.gc(Retention(keep_last=1), dry_run=True)
    assert objects_on_disk(root) == before and len(store.list()) == 4
    assert dry.dry_run and [i.step for i in dry.removed] == [0, 1, 2]
    real = store.gc(Retention(keep_last=1))
    assert (dry.freed_bytes, dry.deleted_objects) == (real.freed_bytes, real.deleted_objects)
    assert not os.listdir(root / "locks")


def test_retention_after_each_save(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root, retention=Retention(keep_last=3))
    for i in range(7):
        store.save(state(i, base), step=i)
        assert [c.step for c in store.list()] == list(range(max(0, i - 2), i + 1))
    assert {parse_object_key(k) for k in objects_on_disk(root)} == referenced(store)
    # save(keep=...) overrides the store's policy for that save
    store.save(state(7, base), step=7, keep=Retention(keep_last=1))
    assert [c.step for c in store.list()] == [7]
    assert torch.equal(store.load()["head"], state(7, base)["head"])
    # module-level save takes keep= too
    ckptstore.save(state(8, base), root, step=8, keep=Retention(keep_last=2))
    assert [c.step for c in store.list()] == [7, 8]


def test_stored_policy_persists_and_applies_to_every_writer(tmp_path, base):
    root = tmp_path / "s"
    s1 = Store(root)
    s1.save(state(0, base), step=0)
    s1.set_retention(Retention(keep_last=2, keep_within="7d"))
    doc = json.loads((root / "ckptstore.json").read_text())
    assert doc["retention"] == {
        "keep_last": 2,
        "keep_best": None,
        "keep_every": None,
        "keep_within": "7d",
        "keep_tags": ["pinned"],
    }
    s2 = Store(root)  # "after a restart"
    assert s2.get_retention() == Retention(keep_last=2, keep_within="7d")
    # keep_within 7d keeps everything just saved; keep_last alone would not
    s2.set_retention(Retention(keep_last=2))
    for i in range(1, 5):
        s2.save(state(i, base), step=i)
    assert [c.step for c in s2.list()] == [3, 4]
    s1.set_retention(None)
    assert Store(root).get_retention() is None
    assert s1.plan_retention().remove == []


def test_a_policy_another_writer_changes_applies_at_the_next_save(tmp_path, base):
    """A Store keeps the stored policy it parsed only while ckptstore.json's bytes stay the same."""
    root = tmp_path / "s"
    s1 = Store(root)
    s1.save(state(0, base), step=0)
    s1.set_retention(Retention(keep_last=3))
    for i in range(1, 5):
        s1.save(state(i, base), step=i)
    assert [c.step for c in s1.list()] == [2, 3, 4]
    Store(root).set_retention(Retention(keep_last=1))  # another process changes it
    s1.save(state(5, base), step=5)
    assert [c.step for c in s1.list()] == [5]
    cfg = root / "ckptstore.json"  # damaged after s1 read it: s1 applies nothing, and says why
    data = cfg.read_bytes()
    assert b'"keep_last":1' in data.replace(b" ", b"")
    cfg.write_bytes(data.replace(b'"pinned"', b'"pinnee"'))
    with pytest.warns(ckptstore.CkptstoreWarning, match="checksum"):
        s1.save(state(6, base), step=6)
    assert [c.step for c in s1.list()] == [5, 6]


def test_pinned_checkpoint_survives(tmp_path, base):
    store = Store(tmp_path / "s", retention=Retention(keep_last=1))
    store.save(state(0, base), step=0, tags=["pinned"])
    for i in range(1, 4):
        store.save(state(i, base), step=i)
    assert [c.step for c in store.list()] == [0, 3]
    assert torch.equal(store.load(step=0)["head"], state(0, base)["head"])


def test_failed_save_deletes_nothing(tmp_path, base, monkeypatch):
    root = tmp_path / "s"
    store = Store(root, retention=Retention(keep_last=1))
    store.save(state(0, base), step=0)
    store.save(state(1, base), step=1)
    real_write = store.backend.write

    def failing(key, data, **kw):
        if key.startswith("manifests/"):
            raise ckptstore.StorageError("injected: manifest write failed")
        return real_write(key, data, **kw)

    monkeypatch.setattr(store.backend, "write", failing)
    with pytest.raises(ckptstore.StorageError, match="injected"):
        store.save(state(2, base), step=2)
    monkeypatch.undo()
    assert [c.step for c in Store(root).list()] == [1]
    assert torch.equal(Store(root).load()["head"], state(1, base)["head"])
    assert not os.listdir(root / "locks")  # the lease was released


def test_orphans_and_temp_files_respect_the_grace_period(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    store.save(state(0, base), step=0)
    old, young = "ab" * 32, "cd" * 32
    for digest in (old, young):
        p = root / "objects" / digest[:2] / digest
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 1000)
    t_old = time.time() - 7200  # older than the grace period (1 h) and TEMP_MIN_AGE
    os.utime(root / "objects" / "ab" / old, (t_old, t_old))
    tmp_old = root / "objects" / "ab" / f".{old}.tmp-1-deadbeef"
    tmp_young = root / "manifests" / ".x.json.tmp-2-feedface"
    tmp_old.write_bytes(b"partial")
    tmp_young.write_bytes(b"partial")
    os.utime(tmp_old, (t_old, t_old))
    report = store.prune()
    assert report.deleted_objects == 1 and report.freed_bytes == 1000
    assert report.deleted_temp == 1 and report.young_objects == 1 and report.young_bytes == 1000
    assert not (root / "objects" / "ab" / old).exists() and (root / "objects" / "cd" / young).exists()
    assert not tmp_old.exists() and tmp_young.exists()
    assert store.prune(grace=0).deleted_objects == 1
    store.verify(read_data=True)


def test_unreadable_manifest_stops_the_sweep(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    store.save(state(0, base), step=0)
    store.save(state(1, base), step=1)
    orphan = "ef" * 32
    (root / "objects" / "ef").mkdir(parents=True, exist_ok=True)
    (root / "objects" / "ef" / orphan).write_bytes(b"y")
    first = sorted((root / "manifests").iterdir())[0]
    first.write_bytes(first.read_bytes()[:-5] + b"xxxxx")  # damaged: hash no longer matches
    before = objects_on_disk(root)
    with pytest.warns(UserWarning, match="skipping checkpoint"):
        report = Store(root).prune(grace=0)
    assert not report.ok and "cannot read" in report.problems[0]
    assert report.deleted_objects == 0 and objects_on_disk(root) == before


def test_live_save_lease_defers_the_sweep(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    for i in range(3):
        store.save(state(i, base), step=i)
    lease = Lease(store.backend, "save")
    lease.write()  # another writer is mid-save
    before = objects_on_disk(root)
    report = store.gc(Retention(keep_last=1), wait=0.3)
    assert [c.step for c in store.list()] == [2]  # forgetting is always safe
    assert report.deferred and "save is in progress" in report.deferred
    assert objects_on_disk(root) == before  # but no object was deleted
    lease.release()
    report = store.prune(grace=0)
    assert report.deleted_objects == 2
    assert {parse_object_key(k) for k in objects_on_disk(root)} == referenced(store)


def test_stale_lease_of_a_dead_process_is_ignored_and_removed(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    store.save(state(0, base), step=0)
    store.save(state(1, base), step=1)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    lease = Lease(store.backend, "save")
    lease.write()
    doc = json.loads((root / lease.key).read_text())
    doc["pid"] = int(dead.stdout)
    (root / lease.key).write_text(json.dumps(doc))
    report = store.gc(Retention(keep_last=1), wait=0)
    assert report.deferred is None and report.deleted_objects == 1
    assert read_locks(store.backend) == []


def test_save_waits_while_a_gc_holds_its_lease(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    store.save(state(0, base), step=0)
    gc_lease, busy = acquire_gc(store.backend)
    assert gc_lease is not None and busy == []
    other = Store(root)
    t = threading.Thread(target=other.save, args=(state(1, base),), kwargs={"step": 1})
    t.start()
    time.sleep(0.5)
    committed_while_held = [c.step for c in Store(root).list()]
    gc_lease.release()
    t.join(timeout=60)
    assert committed_while_held == [0]
    assert [c.step for c in Store(root).list()] == [0, 1]


def test_stale_dedup_index_is_rebuilt_after_another_process_gc(tmp_path, base):
    """A long-lived Store remembers objects of earlier checkpoints for dedup; when another
    process's gc deletes them, the next save must write them again, not point at nothing."""
    root = tmp_path / "s"
    writer = Store(root)
    a = {"rot": torch.randn(40_000, generator=torch.Generator().manual_seed(1))}
    b = {"rot": torch.randn(40_000, generator=torch.Generator().manual_seed(2))}
    writer.save(a, step=0)
    writer.save(b, step=1)  # writer's index now knows a's and b's objects
    Store(root).gc(Retention(keep_last=1))  # "another process": a's objects are deleted
    writer.save(a, step=2)  # dedups against the index: must not reference deleted objects
    Store(root).verify(step=2, read_data=True)
    assert torch.equal(Store(root).load(step=2)["rot"], a["rot"])


def test_lost_lease_is_detected_before_commit(tmp_path, base):
    root = tmp_path / "s"
    store = Store(root)
    store.save(state(0, base), step=0)
    with store.session() as s:
        staged = s.stage(state(1, base))
        (root / s.lease.key).unlink()  # a gc judged us stale
        s.commit(staged, step=1)  # every object is still there: takes a new lease and commits
        assert s.lease.held()
        staged = s.stage(state(2, base))
        (root / s.lease.key).unlink()
        victim = sorted(staged.objects)[0]
        (root / object_key(victim)).unlink()  # ... and the gc removed an object this save needs
        with pytest.raises(ckptstore.StorageError, match="paused longer than the lock timeout"):
            s.commit(staged, step=2)
    assert read_locks(store.backend) == []
    assert [i.step for i in store.list()] == [0, 1]


WRITER = textwrap.dedent("""
    import json, sys, time
    import torch, ckptstore
    uri, n = sys.argv[1], int(sys.argv[2])
    store = ckptstore.Store(uri, chunk_size=64 << 10)
    # blobs over 1 MiB are cut into 64 KiB chunks (one object each): many objects per save
    big = torch.arange(300_000, dtype=torch.float32)                   # shared by every save
    rot = [torch.full((300_000,), float(k)) for k in range(4)]         # reappears every 4 saves
    for i in range(n):
        store.save({"big": big, "rot": rot[i % 4], "uniq": torch.full((300_000,), i + 0.5)}, step=i)
        time.sleep(0.02)
    print(json.dumps({"saved": n}))
""")


def test_concurrent_writer_in_another_process_loses_nothing(tmp_path):
    """gc runs over and over (grace 0: the harshest setting) while another process saves; every
    checkpoint the policy keeps must load, byte for byte."""
    root = tmp_path / "s"
    n = 30
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(root), str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    policy = Retention(keep_every=3, keep_tags=())
    runs = swept = 0
    try:
        while proc.poll() is None:
            if (root / "ckptstore.json").exists():
                r = Store(root).gc(policy, grace=0, wait=0.5)
                assert r.ok, r.problems
                runs += 1
                swept += r.deferred is None and r.deleted_objects > 0
            time.sleep(0.01)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out)["saved"] == n
    assert runs >= 3 and swept >= 1, (runs, swept)  # gc really ran alongside, and really deleted
    store = Store(root)
    store.gc(policy, grace=0)
    steps = [c.step for c in store.list()]
    assert steps == [s for s in range(n) if s % 3 == 0 or s == n - 1]
    big = torch.arange(300_000, dtype=torch.float32)
    for s in steps:
        got = store.load(step=s)
        assert torch.equal(got["big"], big)
        assert torch.equal(got["rot"], torch.full((300_000,), float(s % 4)))
        assert torch.equal(got["uniq"], torch.full((300_000,), s + 0.5))
    assert {parse_object_key(k) for k in objects_on_disk(root)} == referenced(store)
    assert read_locks(store.backend) == []


def test_save_that_fails_while_starting_leaves_no_lease(tmp_path, base, monkeypatch):
    root = tmp_path / "s"
    store = Store(root)
    store.save(state(0, base), step=0)

    def failing_keys():
        raise OSError("listing failed")

    monkeypatch.setattr(store.catalog, "manifest_keys", failing_keys)
    with pytest.raises(OSError, match="listing failed"):
        store.save(state(1, base), step=1)
    assert read_locks(store.backend) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("ckptstore-save-lease")]


def test_a_store_whose_manifests_were_lost_keeps_its_objects_and_verify_says_so(tmp_path, capsys):
    # a partial copy that lost manifests/: every object is unreferenced, and gc used to delete them all
    import shutil

    from ckptstore.cli import main

    root = tmp_path / "s"
    for step in (1, 2):
        ckptstore.save({"w": torch.randn(5000)}, str(root), step=step)
    objects = sorted(p for p in (root / "objects").rglob("*") if p.is_file())
    assert objects
    shutil.rmtree(root / "manifests")
    report = Store(str(root)).gc(grace=0)
    assert report.deleted_objects == 0 and "no checkpoint" in (report.deferred or "")
    assert sorted(p for p in (root / "objects").rglob("*") if p.is_file()) == objects
    capsys.readouterr()
    assert main(["verify", str(root)]) == 1
    out = capsys.readouterr().out
    assert "all ok" not in out and "objects but no checkpoint" in out


def test_forgetting_every_checkpoint_then_pruning_frees_the_data(tmp_path, capsys):
    from ckptstore.cli import main

    s = Store(str(tmp_path / "s"))
    for step in (1, 2):
        s.save({"w": torch.randn(5000)}, step=step)
    for step in (1, 2):
        s.forget(step)
    report = s.prune(grace=0)
    assert report.deleted_objects >= 2 and not report.deferred
    assert not [p for p in (tmp_path / "s" / "objects").rglob("*") if p.is_file()]
    assert main(["verify", str(tmp_path / "s")]) == 0
