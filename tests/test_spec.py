"""docs/format.md says what the code does: hostile JSON, one rule for "does not validate",
newer versions, raw_hash, and the JSON schemas."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

import ckptstore
from ckptstore.format import _hashing
from ckptstore.format._layout import manifest_key


def _plant(uri: str, data: bytes, step: int) -> str:
    key = manifest_key(step, _hashing.digest(data))
    with open(os.path.join(uri, *key.split("/")), "wb") as f:
        f.write(data)
    return key


def _doc(uri: str, step: int) -> dict:
    return json.loads(ckptstore.Store(uri).manifest(step).model_dump_json())


@pytest.fixture
def two(store_uri):
    ckptstore.save({"w": torch.arange(10.0)}, store_uri, step=1, metrics={"loss": 1.0})
    ckptstore.save({"w": torch.arange(20.0)}, store_uri, step=2)
    return store_uri


# -- bullet 8: duplicate keys, bare NaN, $pickle in config/meta ---------------------------------
@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.replace('"step":9,', '"step":9,"step":9,', 1),  # duplicate top-level key
        lambda s: s.replace('"tensors":[{"kind":"torch",', '"tensors":[{"kind":"torch","kind":"torch",', 1),
        lambda s: s.replace('"metrics":{}', '"metrics":{"loss":NaN}', 1),  # bare NaN token
        lambda s: s.replace('"metrics":{}', '"metrics":{"loss":Infinity}', 1),
    ],
)
def test_duplicate_keys_and_bare_nan_are_refused(two, edit):
    doc = _doc(two, 2)
    doc["step"] = 9
    text = json.dumps(doc, separators=(",", ":"))
    bad = edit(text)
    assert bad != text
    _plant(two, bad.encode(), 9)
    with pytest.raises(ckptstore.IntegrityError, match="duplicate|NaN|Infinity"):
        ckptstore.load(two, step=9)


@pytest.mark.parametrize("field", ["config", "meta"])
def test_pickle_in_config_or_meta_needs_allow_pickle(two, field):
    import base64
    import pickle

    doc = _doc(two, 2)
    doc["step"] = 9
    value = {"$pickle": base64.b64encode(pickle.dumps({"a": 1})).decode()}
    doc[field] = value if field == "config" else {"x": value}
    _plant(two, json.dumps(doc).encode(), 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [i.step for i in ckptstore.list_checkpoints(two)] == [1, 2, 9]  # listing never unpickles
    with pytest.raises(ckptstore.PickleNotAllowedError):
        ckptstore.load(two, step=9)
    assert torch.equal(ckptstore.load(two, step=9, allow_pickle=True)["w"], torch.arange(20.0))


def test_pickled_config_saved_with_allow_pickle_lists_and_loads(store_uri):
    from fractions import Fraction

    ckptstore.save({"v": 1}, store_uri, step=1, config={"lr": Fraction(1, 3)}, allow_pickle=True)
    info = ckptstore.list_checkpoints(store_uri)[0]
    assert set(info.config["lr"]) == {"$pickle"}  # shown encoded, never unpickled by a listing
    assert [i.step for i in ckptstore.list_checkpoints(store_uri)] == [1]
    with pytest.raises(ckptstore.PickleNotAllowedError):
        ckptstore.load(store_uri)
    assert ckptstore.load(store_uri, allow_pickle=True) == {"v": 1}


# -- bullet 5: one rule for "does not validate" ---------------------------------------------------
@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["tensors"][0].update(offset=10**6),  # a view outside its blob
        lambda d: d["blobs"][0]["segments"][0].update(offset=10**12),  # a segment outside its object
        lambda d: d["blobs"][0].update(nbytes=d["blobs"][0]["nbytes"] + 8),  # segments do not add up
    ],
)
def test_structurally_bad_manifest_is_skipped_like_a_schema_failure(two, mutate):
    doc = _doc(two, 2)
    doc["step"] = 9
    mutate(doc)
    _plant(two, json.dumps(doc).encode(), 9)
    with pytest.warns(ckptstore.CkptstoreWarning, match="skipping checkpoint at step 9"):
        assert [i.step for i in ckptstore.list_checkpoints(two)] == [1, 2]
    assert ckptstore.Store(two).latest().step == 2
    assert torch.equal(ckptstore.load(two)["w"], torch.arange(20.0))  # a default load falls back
    with pytest.raises(ckptstore.IntegrityError):
        ckptstore.load(two, step=9)
