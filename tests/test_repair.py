"""A damaged store: its damaged checkpoints are named by verify, copied again from a backup with
``cp --repair``, or forgotten with ``ckptstore forget``, after which gc frees their data again.
Before, a damaged manifest blocked gc for good (no command could remove it) and ``cp`` from a
backup skipped what the store already held, damaged or not."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

import ckptstore
from ckptstore import Store
from ckptstore.cli import main


def rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def flip(store: Store, key: str) -> None:
    """Damage the bytes at ``key`` in place (local path or memory://)."""
    data = bytearray(store.backend.read(key))
    data[len(data) // 2] ^= 0x40
    store.backend.write(key, bytes(data))


def plant_newer(root: Path, change: Callable[[dict], None]) -> Path:
    """A store at ``root`` with a checkpoint at step 1 and, at step 2, a copy of its manifest that
    ``change`` (a function of the document) makes one only a newer ckptstore writes, correctly
    hashed and named. Returns the planted file."""
    import blake3

    Store(str(root)).save({"w": rand(10, 0)}, step=1)
    doc = json.loads((root / Store(str(root)).catalog.manifest_keys()[0][2]).read_bytes())
    change(doc)
    doc["step"] = 2
    data = json.dumps(doc, separators=(",", ":")).encode()
    newer = root / "manifests" / f"{'0' * 19}2-{blake3.blake3(data).hexdigest()}.json"
    newer.write_bytes(data)
    return newer


@pytest.fixture(params=["local", "memory"])
def stores(request, tmp_path):
    if request.param == "local":
        uri, backup = str(tmp_path / "run"), str(tmp_path / "backup")
    else:
        tag = f"{os.getpid()}-{time.time_ns()}"
        uri, backup = f"memory://repair-{tag}/run", f"memory://repair-{tag}/backup"
    s = Store(uri)
    for step in range(3):
        s.save({"w": rand(5000, step), "same": torch.ones(100)}, step=step)
    ckptstore.copy_checkpoints(s, backup, all=True, progress=False)
    return s, uri, backup


def test_cp_repair_restores_a_damaged_manifest_and_object_from_the_backup(stores, capsys):
    s, uri, backup = stores
    keys = [k for _s, _d, k in s.catalog.manifest_keys()]
    flip(s, keys[1])  # step 1's manifest
    only2 = [k for k in s.manifest(2).objects if k not in s.manifest(0).objects][0]
    flip(s, f"objects/{only2[:2]}/{only2}")  # an object only step 2 uses
    code, out, err = run(capsys, "verify", uri)
    assert code == 1 and "2 damaged" in out and "--repair" in err and "forget URI --id" in err
    # without --repair the copy trusts what is there, and nothing changes
    code, out, _ = run(capsys, "cp", backup, uri, "--all")
    assert run(capsys, "verify", uri)[0] == 1
    code, out, _ = run(capsys, "cp", backup, uri, "--all", "--repair", "--json")
    assert code == 0 and json.loads(out)["replaced"] == 2
    code, out, _ = run(capsys, "verify", uri)
    assert code == 0 and "all ok" in out
    fresh = Store(uri)
    for step in range(3):
        assert torch.equal(fresh.load(step)["w"], rand(5000, step))


def test_forget_removes_damaged_checkpoints_and_gc_frees_their_data_again(stores, capsys):
    s, uri, _backup = stores
    keys = [k for _s, _d, k in s.catalog.manifest_keys()]
    damaged_id = s.catalog.manifest_keys()[1][1]
    flip(s, keys[1])
    code, _, err = run(capsys, "gc", uri, "--grace", "0s")
    assert code == 1 and "forget URI --damaged" in err
    code, out, err = run(capsys, "du", uri)
    assert code == 1 and "not used by a readable checkpoint" in out and "unreferenced:" not in out
    code, out, _ = run(capsys, "forget", uri, "--damaged", "--dry-run")
    assert code == 0 and f"would forget step 1 ({damaged_id[:12]}): damaged" in out
    assert len(Store(uri).catalog.manifest_keys()) == 3
    code, out, _ = run(capsys, "forget", uri, "--damaged", "--json")
    doc = json.loads(out)
    assert code == 0 and [(f["step"], f["id"]) for f in doc["forgotten"]] == [(1, damaged_id)]
    assert "does not match its hash" in doc["forgotten"][0]["damage"]
    code, out, _ = run(capsys, "forget", uri, "--damaged")
    assert code == 0 and "nothing to forget" in out
    code, out, _ = run(capsys, "gc", uri, "--grace", "0s", "--json")
    assert code == 0 and json.loads(out)["deleted_objects"] == 1  # step 1's own object
    assert run(capsys, "verify", uri)[0] == 0
    assert [i.step for i in Store(uri).list()] == [0, 2]


def test_forget_by_step_and_id_and_its_errors(stores, capsys):
    s, uri, _backup = stores
    ids = [d for _s, d, _k in s.catalog.manifest_keys()]
    code, out, _ = run(capsys, "forget", uri, "--step", "0", "--id", ids[2][:10])
    assert code == 0 and "2 checkpoint(s) forgotten" in out and "ckptstore gc" in out
    assert [i.step for i in Store(uri).list()] == [1]
    code, _, err = run(capsys, "forget", uri)
    assert code == 2 and "--step N, --id ID or --damaged" in err
    code, _, err = run(capsys, "forget", uri, "--step", "7")
    assert code == 1 and "no checkpoint at step 7" in err
    code, _, err = run(capsys, "forget", uri, "--id", "XYZ")
    assert code == 1 and "lowercase hex" in err
    assert "Traceback" not in err


def test_forget_leaves_a_manifest_of_a_newer_format_version(tmp_path, capsys):
    """Not damage: a newer ckptstore wrote it; --damaged must not delete it."""
    uri = str(tmp_path / "run")
    newer = plant_newer(tmp_path / "run", lambda d: d.update(version=99))
    code, out, _ = run(capsys, "forget", uri, "--damaged")
    assert code == 0 and "nothing to forget" in out and newer.exists()


def test_a_store_whose_every_manifest_is_damaged_does_not_say_it_has_none(stores, capsys):
    s, uri, backup = stores
    for _s, _d, key in s.catalog.manifest_keys():
        flip(s, key)
    with pytest.raises(ckptstore.CheckpointNotFoundError, match=r"its 3 manifest\(s\) are damaged.*--repair"):
        ckptstore.load(uri)
    run(capsys, "cp", backup, uri, "--all", "--repair")
    assert torch.equal(ckptstore.load(uri)["w"], rand(5000, 2))


def test_forget_by_step_refuses_a_step_that_holds_several(tmp_path, capsys):
    uri = str(tmp_path / "run")
    s = Store(uri)
    s.save({"w": rand(10, 0)}, step=3)
    s.save({"w": rand(10, 1)}, step=3)  # saving a step twice keeps both
    code, _, err = run(capsys, "forget", uri, "--step", "3")
    assert code == 1 and "holds 2 checkpoints" in err and "--id" in err
    assert len(Store(uri).catalog.manifest_keys()) == 2


def test_cp_repair_counts_only_what_it_wrote_and_mends_a_damaged_config(stores, capsys):
    s, uri, backup = stores
    only2 = [k for k in s.manifest(2).objects if k not in s.manifest(0).objects][0]
    b = Store(backup)
    flip(b, f"objects/{only2[:2]}/{only2}")  # damaged at the source too: nothing to repair it with
    flip(s, f"objects/{only2[:2]}/{only2}")
    cfg = s.backend.read("ckptstore.json")
    s.backend.write("ckptstore.json", cfg[: len(cfg) // 2])
    code, out, err = run(capsys, "cp", backup, uri, "--all", "--repair", "--json")
    doc = json.loads(out)
    assert code == 1 and doc["replaced"] == 1 and doc["config_rewritten"]  # the config only
    assert [d["step"] for d in doc["damaged"]] == [2]
    fresh = Store(uri)
    assert fresh.catalog.config_damage() is None and fresh.config.chunk_size == Store(backup).config.chunk_size


def test_forget_damaged_leaves_a_manifest_with_a_newer_codec(tmp_path, capsys):
    def lz4(doc):
        for info in doc["objects"].values():
            info["codec"] = "lz4"  # a codec a newer ckptstore writes

    uri = str(tmp_path / "run")
    newer = plant_newer(tmp_path / "run", lz4)
    code, out, _ = run(capsys, "forget", uri, "--damaged")
    assert code == 0 and "nothing to forget" in out and newer.exists()


def test_dashboard_of_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    code, _, err = run(capsys, "dashboard", str(f))
    assert code == 1 and "is a file, not a checkpoint store" in err


def test_verify_calls_a_newer_manifest_newer_not_damaged_and_advises_nothing_about_it(tmp_path, capsys):
    uri = str(tmp_path / "run")
    plant_newer(tmp_path / "run", lambda d: d.update(version=99))
    code, out, err = run(capsys, "verify", uri)
    assert code == 1 and "NEWER FORMAT (not damaged" in out and "1 written by a newer ckptstore" in out
    assert "DAMAGED" not in out and "forget" not in err


def test_cp_repair_names_what_the_backup_could_not_repair(stores, capsys):
    s, uri, backup = stores
    s.save({"w": rand(5000, 9)}, step=9)  # not in the backup
    key = [k for st, _d, k in s.catalog.manifest_keys() if st == 9][0]
    flip(s, key)
    code, out, err = run(capsys, "cp", backup, uri, "--all", "--repair", "--json")
    doc = json.loads(out)
    assert code == 1 and [d["step"] for d in doc["still_damaged_in_dst"]] == [9]
    code, out, err = run(capsys, "cp", backup, uri, "--all", "--repair")
    assert code == 1 and "still damaged" in err and f"forget {uri} --id" in err


def test_a_store_that_lost_its_config_says_how_to_recover_and_keeps_its_chunk_size(tmp_path, capsys):
    uri = str(tmp_path / "run")
    Store(uri, chunk_size=1 << 20).save({"w": rand(1 << 20, 0)}, step=1)  # 4 chunks of 1 MiB
    backup = str(tmp_path / "backup")
    assert run(capsys, "cp", uri, backup, "--all")[0] == 0
    assert Store(backup).config.chunk_size == 1 << 20  # a new destination cuts as its source
    (tmp_path / "run" / "ckptstore.json").unlink()
    code, _, err = run(capsys, "verify", uri)
    assert code == 1 and "lost its ckptstore.json" in err and "--repair" in err
    code, out, err = run(capsys, "cp", backup, uri, "--all", "--repair")
    assert code == 0 and "damaged or missing" in err
    assert Store(uri).config.chunk_size == 1 << 20 and run(capsys, "verify", uri)[0] == 0


def test_a_dry_run_of_new_rules_on_a_store_with_a_damaged_config_shows_the_plan(stores, tmp_path, capsys):
    s, uri, _backup = stores
    cfg = s.backend.read("ckptstore.json")
    s.backend.write("ckptstore.json", cfg[:-3])
    code, out, _ = run(capsys, "gc", uri, "--set-policy", "--keep-last", "1", "--dry-run")
    assert code == 0 and "would remove 2 checkpoint(s)" in out
    assert len(Store(uri).list()) == 3
    # the dashboard still shows the run, and says what is wrong with the config
    from ckptstore.web._collect import snapshot

    assert "changed by hand or damaged" in snapshot(Store(uri))["config_problem"]
    assert run(capsys, "dashboard", uri, "--output", str(tmp_path / "page.html"))[0] == 0
