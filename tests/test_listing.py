"""Listing big stores fast: manifests validated once per machine (the validation cache) and
listed from their header; the read-only commands never import torch."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import ckptstore
from ckptstore.format import _hashing
from ckptstore.format._header import header_end, parse_header
from ckptstore.format._layout import manifest_key
from ckptstore.store import _catalog, _verdicts


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "verdicts"
    monkeypatch.setenv("CKPTSTORE_CACHE_DIR", str(folder))
    return folder


def _save_some(uri: str, n: int = 3) -> None:
    for i in range(n):
        ckptstore.save(
            {"w": torch.arange(10.0) + i, "n": torch.zeros(3, dtype=torch.int64)},
            uri,
            step=i * 5,
            epoch=i,
            config={"lr": 0.1, "sizes": (1, 2), "name": "x"},
            metrics={"loss": 1.0 / (i + 1), "bad": float("nan")},
            tags=["pinned"] if i == 1 else [],
            meta={"total_steps": 100},
        )


def _fields(infos: list) -> str:
    """Every field of the records (a NaN metric equals a NaN: dict equality compares NaN by identity)."""
    return json.dumps([dataclasses.asdict(i) for i in infos], default=repr)


def _no_full_validation(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("validated in full")

    monkeypatch.setattr(_catalog, "parse_manifest", refuse)


def test_a_second_listing_reads_only_headers_and_returns_the_same_records(store_uri, cache, monkeypatch):
    _save_some(store_uri)
    first = ckptstore.list_checkpoints(store_uri)  # validates in full (or not: the saves recorded verdicts)
    _verdicts._drain()  # the saves' verdicts are written on a background thread
    assert len(list(cache.rglob("*.json"))) == 3
    _no_full_validation(monkeypatch)
    again = ckptstore.list_checkpoints(store_uri)  # a fresh Store: nothing cached in this process
    assert _fields(again) == _fields(first)  # every field: metrics, config, meta, rng, stats
    assert [i.step for i in again] == [0, 5, 10] and again[1].tags == ("pinned",)
    assert again[0].config == {"lr": 0.1, "sizes": (1, 2), "name": "x"} and again[0].rng is not None
    assert again[2].num_tensors == 2 and again[2].size == 10 * 4 + 3 * 8


def test_a_manifest_whose_bytes_changed_is_damaged_despite_its_verdict(store_uri, cache):
    _save_some(store_uri, 2)
    ckptstore.list_checkpoints(store_uri)
    manifest = sorted(os.scandir(os.path.join(store_uri, "manifests")), key=lambda e: e.name)[0].path
    with open(manifest, "rb") as f:
        data = f.read()
    with open(manifest, "wb") as f:
        f.write(data.replace(b'"epoch":0', b'"epoch":7'))
    with pytest.warns(ckptstore.CkptstoreWarning, match="skipping checkpoint at step 0.*hash"):
        assert [i.step for i in ckptstore.list_checkpoints(store_uri)] == [5]


def test_a_manifest_that_is_not_canonical_is_validated_in_full_every_time(store_uri, cache, monkeypatch):
    _save_some(store_uri, 1)
    doc = json.loads(ckptstore.Store(store_uri).manifest(0).model_dump_json())
    doc["step"] = 9
    data = json.dumps(doc, indent=1).encode()  # valid, but not the canonical bytes
    key = manifest_key(9, _hashing.digest(data))
    with open(os.path.join(store_uri, *key.split("/")), "wb") as f:
        f.write(data)
    assert [i.step for i in ckptstore.list_checkpoints(store_uri)] == [0, 9]
    digest = key.rsplit("-", 1)[1].removesuffix(".json")
    verdict = _verdicts.lookup(_verdicts.cache_dir(), digest)
    assert verdict is not None and verdict.header_end == 0  # no header prefix to read alone
    assert [i.step for i in ckptstore.list_checkpoints(store_uri)] == [0, 9]


def test_header_end_is_where_the_tree_starts(store_uri, cache):
    _save_some(store_uri, 1)
    store = ckptstore.Store(store_uri)
    info = store.info(0)
    with open(os.path.join(store_uri, *info.key.split("/")), "rb") as f:
        data = f.read()
    m = store.manifest(0)
    end = header_end(data, m)
    assert data[end:].startswith(b',"tree":')
    h = parse_header(data, end)
    assert (h.step, h.epoch, h.created_at, h.rng, h.parent) == (m.step, m.epoch, m.created_at, m.rng, m.parent)


def test_a_garbled_cache_entry_only_costs_a_full_validation(store_uri, cache):
    _save_some(store_uri, 2)
    ckptstore.list_checkpoints(store_uri)
    _verdicts._drain()
    for path in cache.rglob("*.json"):
        path.write_text('{"id": "nope"')
    assert [i.step for i in ckptstore.list_checkpoints(store_uri)] == [0, 5]


def test_the_cache_can_be_turned_off(store_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("CKPTSTORE_CACHE_DIR", "off")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    _save_some(store_uri, 2)
    _verdicts._drain()
    assert [i.step for i in ckptstore.list_checkpoints(store_uri)] == [0, 5]
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_structure_damage_is_still_found_on_a_machine_with_a_cache(store_uri, cache):
    """A manifest with no verdict (here: planted by hand) gets the full checks (format.md §8)."""
    _save_some(store_uri, 1)
    doc = json.loads(ckptstore.Store(store_uri).manifest(0).model_dump_json())
    doc["step"] = 9
    doc["blobs"][0]["nbytes"] += 8  # segments do not add up
    data = json.dumps(doc, separators=(",", ":")).encode()
    key = manifest_key(9, _hashing.digest(data))
    with open(os.path.join(store_uri, *key.split("/")), "wb") as f:
        f.write(data)
    for _ in range(2):
        with pytest.warns(ckptstore.CkptstoreWarning, match="skipping checkpoint at step 9"):
            assert [i.step for i in ckptstore.list_checkpoints(store_uri)] == [0]


# -- the read-only commands need no torch --------------------------------------------------------
_CHILD = """
import sys
from ckptstore.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "imported torch"
assert "numpy" not in sys.modules, "imported numpy"
sys.exit(code)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["ls", "STORE"],
        ["ls", "--json", "STORE"],
        ["show", "STORE"],
        ["du", "STORE"],
        ["gc", "--dry-run", "STORE"],
    ],
)
def test_read_only_commands_do_not_import_torch(store_uri, argv):
    _save_some(store_uri, 2)
    args = [store_uri if a == "STORE" else a for a in argv]
    env = {**os.environ, "CKPTSTORE_CACHE_DIR": "off"}  # the full validation path too
    r = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout


def test_import_ckptstore_does_not_import_torch_until_needed(store_uri):
    code = (
        "import sys, ckptstore\n"
        "assert 'torch' not in sys.modules\n"
        "from ckptstore import Store, CheckpointInfo, list_checkpoints\n"
        "assert callable(ckptstore.interop.read_hf_folder)  # subpackages are attributes, as before\n"
        "assert not hasattr(ckptstore, 'no_such_name')\n"
        "assert 'torch' not in sys.modules\n"
        "import torch\n"
        "ckptstore.save({'w': torch.ones(2)}, sys.argv[1])\n"
        "assert ckptstore.load(sys.argv[1])['w'].sum() == 2\n"
    )
    r = subprocess.run([sys.executable, "-c", code, store_uri], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


_PROGRAM = """
import sys
from ckptstore.cli import {entry}
sys.argv = ["ckptstore", *sys.argv[1:]]
code = {entry}() if "{entry}" == "run" else {entry}(sys.argv[1:])
from pydantic.plugin import _loader
print("scanned" if _loader._plugins is not None else "skipped")
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("entry", "preset", "expect"), [("run", None, "skipped"), ("main", None, "scanned"), ("run", "", "scanned")]
)
def test_the_program_skips_pydantics_plugin_scan(store_uri, entry, preset, expect):
    """The ``ckptstore`` program (``run``) does not scan every installed package for pydantic
    plugins; ``main`` called from a user's own process leaves pydantic as the user has it, and
    so does the program when the environment names its own ``PYDANTIC_DISABLE_PLUGINS``."""
    _save_some(store_uri, 1)
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if preset is not None:
        env["PYDANTIC_DISABLE_PLUGINS"] = preset
    code = _PROGRAM.replace("{entry}", entry)
    r = subprocess.run(
        [sys.executable, "-c", code, "gc", "--dry-run", store_uri], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == expect


def test_a_listing_that_reads_ahead_on_threads_gives_what_one_thread_gives(cache, monkeypatch):
    """Stores whose reads wait on a network (memory:// stands in for S3 here) read manifests
    ahead on threads while the calling thread parses; a local disk lists on one thread. Both
    give the same records and skip the same damaged manifest."""
    uri = f"memory://listing-ahead-{os.getpid()}"
    for i in range(20):
        ckptstore.save({"w": torch.arange(3.0) + i}, uri, step=i, rng=False)
    store = ckptstore.Store(uri)
    assert store._catalog._slow_reads()  # noqa: SLF001 - the path under test
    key = sorted(store.backend.list("manifests"))[7]
    data = store.backend.read(key)
    store.backend.write(key, data[:200] + bytes([data[200] ^ 1]) + data[201:])
    with pytest.warns(ckptstore.CkptstoreWarning, match="step 7.*hash"):
        ahead = ckptstore.list_checkpoints(uri)
    assert [i.step for i in ahead] == [s for s in range(20) if s != 7]
    monkeypatch.setattr(_catalog.Catalog, "_slow_reads", lambda self: False)
    with pytest.warns(ckptstore.CkptstoreWarning, match="step 7.*hash"):
        one_thread = ckptstore.list_checkpoints(uri)
    assert _fields(one_thread) == _fields(ahead)
