"""``ckptstore.json`` (docs/format.md §3): version 2 records the chunk size every writer uses and a
checksum that gc verifies before acting on the stored policy; version-1 stores keep working."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import blake3
import pytest
import torch

import ckptstore
from ckptstore import IntegrityError, Retention, Store
from ckptstore.cli import main

GOLDEN = Path(__file__).parent / "golden" / "v1"
MiB = 1 << 20


def rand(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def spec_checksum(data: bytes) -> str:
    """The checksum as §3 defines it, written from the spec alone."""
    doc = json.loads(data)
    doc.pop("checksum")
    return blake3.blake3(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def pinned_store(tmp_path) -> Path:
    root = tmp_path / "run"
    s = Store(root)
    s.set_retention(Retention(keep_last=1, keep_tags=("pinned",)))
    for i in range(3):
        s.save({"w": rand(1000, i)}, step=i, tags=["pinned"] if i == 0 else [])
    assert [i.step for i in s.list()] == [0, 2]
    return root


def test_a_new_store_writes_version_2_with_chunk_size_and_checksum(tmp_path):
    root = tmp_path / "s"
    Store(root, chunk_size=MiB).save({"w": rand(10, 0)})
    data = (root / "ckptstore.json").read_bytes()
    doc = json.loads(data)
    assert doc["version"] == 2 and doc["chunk_size"] == MiB
    assert list(doc)[-1] == "checksum" and doc["checksum"] == spec_checksum(data)
    # the checksum bytes are the file up to its last member
    body = data[: data.rindex(b',"checksum"')] + b"}"
    assert blake3.blake3(body).hexdigest() == doc["checksum"]
    Store(root).set_retention(Retention(keep_last=3))
    data = (root / "ckptstore.json").read_bytes()
    assert json.loads(data)["checksum"] == spec_checksum(data) and json.loads(data)["retention"]["keep_last"] == 3


def test_a_flipped_bit_in_the_config_is_refused_by_gc_and_reported_by_verify(pinned_store, capsys):
    cfg = pinned_store / "ckptstore.json"
    cfg.write_bytes(cfg.read_bytes().replace(b'"pinned"', b'"pinnee"'))
    code, out, err = run(capsys, "gc", str(pinned_store))
    assert code == 1 and "ckptstore.json" in err and "checksum" in err and "--set-policy" in err
    with pytest.raises(IntegrityError, match="checksum"):
        Store(pinned_store).gc()
    with pytest.raises(IntegrityError, match="checksum"):
        Store(pinned_store).prune()
    assert [i.step for i in Store(pinned_store).list()] == [0, 2]  # nothing was forgotten
    code, out, _ = run(capsys, "verify", str(pinned_store))
    assert code == 1 and "ckptstore.json: DAMAGED" in out and "checksum" in out
    code, out, _ = run(capsys, "verify", str(pinned_store), "--json")
    assert code == 1 and json.loads(out)["config"]["ok"] is False
    # checkpoints still load, and a save still works: it applies no policy, and says so
    assert torch.equal(ckptstore.load(pinned_store, step=0)["w"], rand(1000, 0))
    with pytest.warns(ckptstore.CkptstoreWarning, match="ckptstore.json"):
        Store(pinned_store).save({"w": rand(1000, 3)}, step=3)
    assert [i.step for i in Store(pinned_store).list()] == [0, 2, 3]
    # storing the policy again repairs the config
    code, out, err = run(capsys, "gc", str(pinned_store), "--keep-last", "1", "--set-policy")
    assert code == 0, err
    assert [i.step for i in Store(pinned_store).list()] == [0, 3]
    code, out, _ = run(capsys, "verify", str(pinned_store))
    assert code == 0


def test_a_version_1_store_keeps_working_and_keeps_its_version(tmp_path):
    root = tmp_path / "v1"
    shutil.copytree(GOLDEN, root)
    before = json.loads((root / "ckptstore.json").read_bytes())
    assert before["version"] == 1 and "checksum" not in before
    s = Store(root, chunk_size=256 << 10)  # a version-1 store: the writer's own chunk size
    s.set_retention(Retention(keep_last=5))
    after = json.loads((root / "ckptstore.json").read_bytes())
    assert after["version"] == 1 and "checksum" not in after and "chunk_size" not in after
    assert s.chunk_size == 256 << 10
    s.gc()
    assert [i.step for i in Store(root).list()] == [10, 20]


@pytest.mark.parametrize("bad", [b'"version":1', b'"chunk_size":1024', b'{"format": ', b"[1, 2]", b""])
def test_an_unreadable_config_is_damage_loads_go_on_gc_refuses_set_policy_repairs(tmp_path, capsys, bad):
    """A config that is not JSON or breaks the version rules used to block every operation, verify
    included, with no way out but a hand edit: it is now damage, like a checksum mismatch."""
    root = tmp_path / "s"
    w = rand(10, 0)
    Store(root).save({"w": w}, step=1)
    p = root / "ckptstore.json"
    text = p.read_bytes()
    if bad == b'"version":1':
        text = text.replace(b'"version":2', bad)
    elif bad == b'"chunk_size":1024':
        doc = json.loads(text)
        doc["chunk_size"] = 1024
        text = json.dumps(doc, separators=(",", ":")).encode()
    else:
        text = bad
    p.write_bytes(text)
    assert [i.step for i in Store(root).list()] == [1]
    assert torch.equal(ckptstore.load(str(root))["w"], w)
    with pytest.warns(ckptstore.CkptstoreWarning, match="no retention policy was applied"):
        Store(root).save({"w": w + 1}, step=2)
    with pytest.raises(IntegrityError, match="changed by hand or damaged"):
        Store(root).gc(Retention(keep_last=1))
    code, out, _ = run(capsys, "verify", str(root))
    assert code == 1 and "ckptstore.json: DAMAGED" in out and "--set-policy" in out
    assert "step 1" in out and "step 2" in out
    code, _, err = run(capsys, "gc", str(root))
    assert code == 1 and "changed by hand or damaged" in err
    code, out, _ = run(capsys, "gc", str(root), "--clear-policy", "--dry-run")
    assert code == 0 and "would remove" in out
    code, out, _ = run(capsys, "gc", str(root), "--clear-policy")
    assert code == 0 and "removed the store's retention policy" in out
    cfg = json.loads(p.read_bytes())
    assert cfg["retention"] is None and cfg["checksum"] == spec_checksum(p.read_bytes())
    assert run(capsys, "verify", str(root))[0] == 0
    assert [i.step for i in Store(root).list()] == [1, 2]


def test_a_config_of_another_format_or_a_newer_version_is_still_refused(tmp_path):
    root = tmp_path / "s"
    Store(root).save({"w": rand(10, 0)})
    p = root / "ckptstore.json"
    good = p.read_bytes()
    p.write_bytes(b'{"format":"zarr","version":3}')
    with pytest.raises(IntegrityError, match="not a ckptstore document"):
        Store(root).list()
    p.write_bytes(good.replace(b'"version":2', b'"version":99'))
    with pytest.raises(ckptstore.UnsupportedFormatError, match="Upgrade"):
        Store(root).list()


def test_every_writer_uses_the_chunk_size_the_store_records(tmp_path):
    root = tmp_path / "s"
    w = rand(MiB, 5)  # 4 MiB
    first = Store(root, chunk_size=MiB).save({"w": w}, step=1)
    assert first.new_bytes == 4 * MiB
    other = Store(root)  # another writer, default chunk size: uses the store's
    assert other.chunk_size == MiB
    again = other.save({"w": w.clone()}, step=2)
    assert again.new_bytes == 0  # same boundaries, so every chunk is found
    assert len(other.manifest(2).objects) == 4
    with pytest.warns(ckptstore.CkptstoreWarning, match="chunk_size"):
        third = Store(root, chunk_size=2 * MiB)
        assert third.chunk_size == MiB


def test_repairing_a_damaged_config_keeps_its_chunk_size_and_creation_time(tmp_path, capsys):
    """The repair writes what is still legible in the damaged file; a file with nothing legible
    gets the chunk size the newest checkpoint was cut with (not this writer's default), so that
    later saves still deduplicate against the old data."""
    root = tmp_path / "s"
    s = Store(root, chunk_size=MiB)
    s.set_retention(Retention(keep_last=5))
    w = rand(MiB, 1)  # 4 MiB: four chunks
    s.save({"w": w}, step=1)
    p = root / "ckptstore.json"
    before = json.loads(p.read_bytes())
    p.write_bytes(p.read_bytes()[:-5])  # cut short
    assert run(capsys, "gc", str(root), "--clear-policy")[0] == 0
    after = json.loads(p.read_bytes())
    assert (after["chunk_size"], after["created_at"], after["retention"]) == (MiB, before["created_at"], None)
    p.write_bytes(b"garbage")
    assert Store(root).chunk_size == MiB  # read from the checkpoint: a save cuts as before
    with pytest.warns(ckptstore.CkptstoreWarning, match="changed by hand or damaged"):
        assert Store(root).save({"w": w.clone()}, step=2).new_bytes == 0  # every chunk found
    assert run(capsys, "gc", str(root), "--set-policy", "--keep-last", "3")[0] == 0
    assert json.loads(p.read_bytes())["chunk_size"] == MiB
    # a damaged file that names a newer version is a newer store, not damage
    p.write_bytes(b'{"format":"ckptstore","version":7,"chunk_size":')
    with pytest.raises(ckptstore.UnsupportedFormatError, match="Upgrade"):
        Store(root).list()


def test_gc_policy_flags_that_contradict_are_usage_errors(tmp_path, capsys):
    root = tmp_path / "s"
    Store(root).save({"w": rand(10, 0)})
    assert run(capsys, "gc", str(root), "--set-policy")[0] == 2  # nothing to store
    assert run(capsys, "gc", str(root), "--clear-policy", "--keep-last", "2")[0] == 2
    assert run(capsys, "gc", str(root), "--keep-within", "0d", "--dry-run")[0] == 2  # was exit 1, timedelta(0)
    assert run(capsys, "gc", str(root), "--grace", "0", "--dry-run")[0] == 0  # 0 needs no unit
    code, _, err = run(capsys, "forget", str(root))
    assert code == 2 and "--damaged" in err
