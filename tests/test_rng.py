from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import ckptstore


def _draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_save_records_and_restore_applies(store_uri):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    ckptstore.save({"w": torch.ones(1)}, store_uri)
    expected = _draw()
    _draw()
    info = ckptstore.info(store_uri)
    assert info.rng is not None and info.rng.python is not None and info.rng.torch
    skipped = ckptstore.restore_rng(info)
    assert skipped == []
    assert _draw() == expected
    ckptstore.load(store_uri, restore_rng=True)
    assert _draw() == expected


def test_rng_can_be_left_out(store_uri):
    ckptstore.save({"w": torch.ones(1)}, store_uri, rng=False)
    assert ckptstore.info(store_uri).rng is None
    with pytest.warns(UserWarning, match="no RNG states"):
        ckptstore.restore_rng(ckptstore.info(store_uri))


def test_states_for_missing_hardware_are_skipped_with_a_warning():
    state = ckptstore.capture_rng_state()
    foreign = state.model_copy(update={"cuda": [state.torch] * 2, "mps": state.torch})
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.warns(UserWarning, match="cuda .*2 device states saved, 0 devices here"):
        skipped = ckptstore.restore_rng(foreign)
    assert any(s.startswith("cuda") for s in skipped)
