"""Resume selection used by the framework adapters: newest checkpoint that verifies."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore.adapters._resume import find_resumable

from ._fw_util import damage_newest


def _store(tmp_path: Path) -> Path:
    for step in (1, 2, 3):
        ckptstore.save({"w": torch.full((1000,), float(step)), "step": step}, tmp_path / "s", step=step)
    return tmp_path / "s"


def test_nothing_to_resume(tmp_path: Path) -> None:
    with ckptstore.Store(tmp_path / "none") as store:
        assert find_resumable(store) is None


def test_newest_when_intact_and_exact_request(tmp_path: Path) -> None:
    with ckptstore.Store(_store(tmp_path)) as store:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            info, state = find_resumable(store, map_location="cpu")
        assert info.step == 3 and state["step"] == 3
        info, state = find_resumable(store, step=2, map_location="cpu")
        assert state["w"][0].item() == 2.0


def test_damaged_object_falls_back_and_names_both(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    bad = damage_newest(uri)
    with ckptstore.Store(uri) as store, pytest.warns(UserWarning) as caught:
        info, state = find_resumable(store, map_location="cpu")
    text = " ".join(str(w.message) for w in caught)
    assert info.step == 2 and state["step"] == 2
    assert f"step 3 ({bad.short_id})" in text and f"Resuming from step 2 ({info.short_id}) instead" in text
    with ckptstore.Store(uri) as store, pytest.raises(ckptstore.IntegrityError):
        find_resumable(store, step=3)  # asked for by name: no silent fallback


def test_damaged_manifest_falls_back(tmp_path: Path) -> None:
    uri = _store(tmp_path)
    newest = sorted((uri / "manifests").iterdir())[-1]
    newest.chmod(0o644)
    newest.write_bytes(newest.read_bytes().replace(b'"step"', b'"stap"', 1))
    with ckptstore.Store(uri) as store, pytest.warns(UserWarning, match="step 3") as caught:
        info, _ = find_resumable(store, map_location="cpu")
    assert info.step == 2
    assert any("Resuming from step 2" in str(w.message) for w in caught)


def test_all_damaged_is_an_error_not_a_fresh_start(tmp_path: Path) -> None:
    ckptstore.save({"w": torch.ones(1000)}, tmp_path / "one", step=5)
    with ckptstore.Store(tmp_path / "one") as store:
        key = next(iter(store.manifest(5).objects))
    obj = tmp_path / "one" / "objects" / key[:2] / key
    obj.chmod(0o644)
    obj.write_bytes(b"garbage")
    with ckptstore.Store(tmp_path / "one") as store, pytest.raises(ckptstore.IntegrityError, match="step 5"):
        find_resumable(store, map_location="cpu")
