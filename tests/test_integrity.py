"""Damage and hostile input give a clean ckptstore error, never wrong tensors or a crash."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch

import ckptstore
from ckptstore.format import _hashing
from ckptstore.format._layout import manifest_key


def _objects(root):
    out = []
    for dirpath, _, files in os.walk(os.path.join(root, "objects")):
        out += [os.path.join(dirpath, f) for f in files if not f.startswith(".")]
    return sorted(out, key=os.path.getsize)


@pytest.fixture
def saved(store_uri):
    state = {"w": torch.randn(100_000), "small": torch.arange(10)}
    ckptstore.save(state, store_uri, step=1)
    ckptstore.save({"w": torch.randn(100_000), "small": torch.arange(5)}, store_uri, step=2)
    return store_uri, state


def test_flipped_byte_is_detected(saved):
    uri, _ = saved
    path = _objects(uri)[-1]
    with open(path, "r+b") as f:
        f.seek(1234)
        b = f.read(1)
        f.seek(1234)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(ckptstore.IntegrityError, match="does not match its hash"):
        for step in (1, 2):
            ckptstore.load(uri, step=step)


def test_truncated_object_is_detected(saved):
    uri, _ = saved
    for path in _objects(uri):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ckptstore.IntegrityError, match="truncated|hash"):
        ckptstore.load(uri, step=1)


def test_missing_object_is_detected(saved):
    uri, _ = saved
    for p in _objects(uri):
        os.unlink(p)
    with pytest.raises(ckptstore.ObjectMissingError) as ei:
        ckptstore.load(uri, step=1)
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, ckptstore.IntegrityError)
    assert "missing" in str(ei.value)


def test_damaged_manifest(saved):
    uri, state = saved
    mdir = os.path.join(uri, "manifests")
    newest = sorted(os.listdir(mdir))[-1]
    with open(os.path.join(mdir, newest), "r+b") as f:
        f.seek(10)
        f.write(b"#")
    with pytest.raises(ckptstore.IntegrityError):
        ckptstore.load(uri, step=2)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        infos = ckptstore.list_checkpoints(uri)
    assert [i.step for i in infos] == [1]
    assert any("skipping checkpoint at step 2" in str(x.message) for x in w)
    # "latest" skips the damaged manifest; the earlier checkpoint still loads
    assert ckptstore.info(uri).step == 1
    assert torch.equal(ckptstore.load(uri)["w"], state["w"])


def _plant_manifest(uri, doc: dict, step: int = 9) -> None:
    data = json.dumps(doc).encode()
    key = manifest_key(step, _hashing.digest(data))
    with open(os.path.join(uri, *key.split("/")), "wb") as f:
        f.write(data)


def _valid_doc(uri, step=2) -> dict:
    m = ckptstore.Store(uri).manifest(step)
    return json.loads(m.model_dump_json())


@pytest.mark.parametrize(
    "mutate,error",
    [
        (
            lambda d: d["objects"].update({"../../../etc/passwd": {"codec": "none", "size": 1, "raw_size": 1}}),
            ckptstore.IntegrityError,
        ),
        (lambda d: d["tensors"][0].update(shape=[10**9, 10**9]), ckptstore.IntegrityError),
        (lambda d: d["tensors"][0].update(offset=10**6), ckptstore.IntegrityError),
        (lambda d: d["tensors"][0].update(blob=99), ckptstore.IntegrityError),
        (lambda d: d["blobs"][0].update(nbytes=10**15), ckptstore.IntegrityError),
        (lambda d: d["blobs"][0]["segments"][0].update(offset=10**12), ckptstore.IntegrityError),
        (lambda d: d["tensors"][0].update(dtype="float1024"), ckptstore.UnsupportedFormatError),
        # a codec a newer ckptstore writes: not damage (`forget --damaged` must leave it)
        (lambda d: next(iter(d["objects"].values())).update(codec="lz4"), ckptstore.UnsupportedFormatError),
        (lambda d: d.update(version=4), ckptstore.UnsupportedFormatError),  # newer than this reader
        (lambda d: d.update(version=2), ckptstore.IntegrityError),  # version 2 needs `distributed` (§21)
        (lambda d: d.update(distributed={"world_size": 2, "names": {}}), ckptstore.IntegrityError),  # v1 has none
        (
            lambda d: d.update(
                version=2,
                tree={"$sharded": 0},
                distributed={
                    "world_size": 2,
                    "names": {},
                    "sharded": [
                        {"dtype": "float32", "shape": [10], "chunks": [{"offsets": [0], "sizes": [5], "tensor": 0}]}
                    ],
                },
            ),
            ckptstore.IntegrityError,  # chunks that do not cover the tensor
        ),
        (lambda d: d.update(format="other"), ckptstore.IntegrityError),
        (lambda d: d.update(tree={"$tensor": 55}), ckptstore.IntegrityError),
        (lambda d: d.update(tree={"$pickle": "gASVAAAAAAAAAAA="}), ckptstore.PickleNotAllowedError),
        (lambda d: d.update(tree={"$bogus": 1}), ckptstore.IntegrityError),
        (lambda d: d.update(step=3), ckptstore.IntegrityError),  # name says 9
        (lambda d: d["tensors"][0].update(kind="numpy", dtype="|O"), ckptstore.IntegrityError),
    ],
)
def test_hostile_manifests_are_refused(saved, mutate, error):
    uri, _ = saved
    doc = _valid_doc(uri)
    doc["step"] = 9
    mutate(doc)
    _plant_manifest(uri, doc, step=9)
    with pytest.raises(error):
        ckptstore.load(uri, step=9)


def test_deeply_nested_tree_is_refused(saved):
    uri, _ = saved
    doc = _valid_doc(uri)
    doc["step"] = 9
    data = json.dumps(doc).encode().replace(b'"tree":', b'"tree":' + b"[" * 100000 + b"]" * 100000 + b',"x":', 1)
    key = manifest_key(9, _hashing.digest(data))
    with open(os.path.join(uri, *key.split("/")), "wb") as f:
        f.write(data)
    with pytest.raises(ckptstore.IntegrityError):
        ckptstore.load(uri, step=9)


def test_foreign_and_temporary_files_are_ignored(saved):
    uri, _ = saved
    open(os.path.join(uri, "manifests", ".00000000000000000003-abc.json.tmp-1-ff"), "wb").close()
    open(os.path.join(uri, "manifests", "README.txt"), "w").close()
    open(os.path.join(uri, "objects", "notes"), "w").close()
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [1, 2]
    ckptstore.load(uri)


def test_verify(saved):
    uri, _ = saved
    store = ckptstore.Store(uri)
    store.verify(1)
    store.verify(2, read_data=False)
    os.unlink(_objects(uri)[0])
    with pytest.raises(ckptstore.IntegrityError):
        for step in (1, 2):
            store.verify(step, read_data=False)


def test_damaged_duplicate_step_does_not_hide_the_good_one(store_uri):
    good = ckptstore.save({"v": 1}, store_uri, step=3)
    bad = ckptstore.save({"v": 2}, store_uri, step=3)
    with open(os.path.join(store_uri, *bad.key.split("/")), "r+b") as f:
        f.write(b"garbage")
    assert ckptstore.info(store_uri, step=3).id == good.id
    assert ckptstore.load(store_uri, step=3) == {"v": 1}


def test_checkpoint_removed_during_load_is_not_called_damaged(monkeypatch):
    import uuid

    uri = f"memory://removed-{uuid.uuid4().hex}/run"
    info = ckptstore.save({"w": torch.randn(1000)}, uri, step=1)
    store = ckptstore.Store(uri)
    real_read = store.backend.read

    def read_then_vanish(key):
        if key.startswith("objects/"):
            # a concurrent gc removes the checkpoint between the manifest read and the data read
            store.backend.delete(info.key)
            for k in store.backend.list("objects"):
                store.backend.delete(k)
        return real_read(key)

    monkeypatch.setattr(store.backend, "read", read_then_vanish)
    with pytest.raises(ckptstore.CheckpointNotFoundError, match="was removed"):
        store.load(1)


def test_manifest_parse_cache_never_hides_damage(store_uri):
    """Parsed manifests are reused across Store instances by their hash; the bytes are still
    read and hashed every time, so a manifest damaged after a load is refused."""
    info = ckptstore.save({"w": torch.randn(10)}, store_uri, step=1)
    ckptstore.load(store_uri)  # parsed and cached under its hash
    path = os.path.join(store_uri, *info.key.split("/"))
    with open(path, "r+b") as f:
        f.seek(5)
        f.write(b"#")
    with pytest.raises(ckptstore.IntegrityError, match="does not match its hash"):
        ckptstore.load(store_uri, step=1)
