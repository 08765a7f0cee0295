"""A store written by format v1 (tests/golden/v1, made by tests/make_golden.py) loads forever."""

from __future__ import annotations

import os
import shutil

import ckptstore

from .helpers import assert_same
from .make_golden import golden_state

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "v1")


def test_golden_v1_store_loads(tmp_path):
    root = tmp_path / "v1"
    shutil.copytree(GOLDEN, root)
    infos = ckptstore.list_checkpoints(root)
    assert [(i.step, i.epoch, i.tags) for i in infos] == [(10, 1, ("golden",)), (20, 2, ("golden",))]
    assert infos[0].config == {"lr": 0.001}
    for info in infos:
        assert_same(ckptstore.load(root, step=info.step), golden_state(info.step))
        ckptstore.Store(root).verify(info.step)
    codecs = {o.codec for o in ckptstore.Store(root).manifest(20).objects.values()}
    assert "zstd" in codecs


def test_golden_store_dedups_against_new_saves(tmp_path):
    root = tmp_path / "v1"
    shutil.copytree(GOLDEN, root)
    # same chunk size as the golden writer: chunk boundaries match, so every chunk is found
    info = ckptstore.Store(root, chunk_size=256 << 10).save(golden_state(20), step=30, rng=False, compression="zstd")
    assert info.new_bytes == 0  # every byte already stored by v1's newest checkpoint
