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


# -- bullet 4: a newer manifest is not skipped by a default load -----------------------------------
@pytest.fixture
def newer(two):
    doc = _doc(two, 2)
    doc["step"], doc["version"] = 9, 99
    _plant(two, json.dumps(doc).encode(), 9)
    return two


def test_newer_manifest_stops_a_default_load_and_resume(newer):
    from ckptstore.adapters.loop import find_resumable

    with pytest.warns(ckptstore.CkptstoreWarning, match="version 99.*[Uu]pgrade"):
        assert [i.step for i in ckptstore.list_checkpoints(newer)] == [1, 2]  # the others still list
    store = ckptstore.Store(newer)
    calls = (store.latest, lambda: ckptstore.load(newer), lambda: ckptstore.info(newer), lambda: find_resumable(newer))
    for call in calls:
        with warnings.catch_warnings(), pytest.raises(ckptstore.UnsupportedFormatError, match="[Uu]pgrade"):
            warnings.simplefilter("ignore")
            call()
    with pytest.raises(ckptstore.UnsupportedFormatError):
        ckptstore.load(newer, step=9)
    assert torch.equal(ckptstore.load(newer, step=2)["w"], torch.arange(20.0))  # asked for by step: fine
    ckptstore.save({"w": torch.ones(3)}, newer, step=10)  # saving still works; the newest is now readable
    assert ckptstore.Store(newer).latest().step == 10


def test_ls_shows_a_newer_manifest(newer, capsys):
    from ckptstore.cli import main

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        main(["ls", newer])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.split()[:1] == ["9"])
    assert "newer format, upgrade" in line


# -- bullet 7: readers check decoded bytes against raw_hash -----------------------------------------
@pytest.mark.parametrize("size", [300, 3_000_000])  # a packed blob, and chunks decoded straight into place
def test_decoded_bytes_are_checked_against_raw_hash(store_uri, size):
    ckptstore.save({"w": torch.zeros(size)}, store_uri, step=1, compression="zstd")
    doc = _doc(store_uri, 1)
    compressed = [k for k, o in doc["objects"].items() if o["codec"] != "none"]
    assert compressed and all(doc["objects"][k]["raw_hash"] for k in compressed)
    doc["step"] = 9
    for k in compressed:  # what a codec bug would look like: the stored bytes verify, the decoded ones do not
        doc["objects"][k]["raw_hash"] = "0" * 64
    _plant(store_uri, json.dumps(doc).encode(), 9)
    for kwargs in ({}, {"mmap": False}, {"map_location": "cpu"}):
        with pytest.raises(ckptstore.IntegrityError, match="decoded bytes"):
            ckptstore.load(store_uri, step=9, **kwargs)
    with pytest.raises(ckptstore.IntegrityError, match="decoded bytes"):
        ckptstore.Store(store_uri).verify(9)
    ckptstore.load(store_uri, step=9, verify=False)  # the user opted out of hashing


# -- bullet 6: the JSON schemas validate exactly what the code writes and accepts -------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _validator(name: str):
    jsonschema = pytest.importorskip("jsonschema")
    with open(os.path.join(ROOT, "docs", "schema", f"{name}.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)  # date-time checked (rfc3339-validator)


def _written(tmp_path) -> dict[str, bytes]:
    """Manifests and a store config as the code writes them: version 1 (metrics with non-finite
    values, a config, RNG states, compressed objects) and version 2 (a sharded tensor)."""
    uri = str(tmp_path / "w")
    ckptstore.save(
        {"w": torch.randn(5000), "n": torch.zeros(300)},
        uri,
        step=3,
        epoch=1,
        metrics={"loss": float("nan"), "best": float("inf"), "worst": float("-inf"), "acc": 0.5},
        tags=["pinned"],
        config={"lr": 0.1, "layers": [1, 2]},
        compression="zstd",
    )
    store = ckptstore.Store(uri)
    with store.session() as s:
        part = s.stage([torch.ones(4), torch.ones(4)])
        chunks = [
            ckptstore.ShardChunk(offsets=[0], sizes=[4], tensor=0),
            ckptstore.ShardChunk(offsets=[4], sizes=[4], tensor=1),
        ]
        s.commit(
            part,
            state={"w": ckptstore.ShardedTensor(dtype="float32", shape=[8], chunks=chunks)},
            distributed=ckptstore.Distributed(world_size=2, names={"w": ["w"]}),
            step=4,
            rng=False,
        )
    out = {}
    for step in (3, 4):
        with open(os.path.join(uri, store.info(step).key), "rb") as f:
            out[f"v{step - 2}"] = f.read()
    with open(os.path.join(uri, "ckptstore.json"), "rb") as f:
        out["store"] = f.read()
    return out


def test_schemas_accept_what_the_code_writes(tmp_path):
    manifest, store = _validator("manifest"), _validator("store")
    written = _written(tmp_path)
    assert json.loads(written["v1"])["version"] == 1 and json.loads(written["v2"])["version"] == 2
    assert json.loads(written["v1"])["metrics"]["loss"] == "NaN"
    for name in ("v1", "v2"):
        manifest.validate(json.loads(written[name]))
    store.validate(json.loads(written["store"]))
    golden = os.path.join(ROOT, "tests", "golden", "v1")
    for f in os.listdir(os.path.join(golden, "manifests")):
        with open(os.path.join(golden, "manifests", f), "rb") as fh:
            manifest.validate(json.loads(fh.read()))


def _delete(key):
    return lambda d: d.pop(key)


@pytest.mark.parametrize(
    "mutate,accepted",
    [
        (lambda d: None, True),
        (_delete("epoch"), True),  # fields with a default may be left out
        (lambda d: [o.pop("raw_hash") for o in d["objects"].values()], True),  # raw_hash null or absent
        (lambda d: d["metrics"].update(x=7), True),  # an int is a number
        (_delete("format"), False),
        (_delete("version"), False),
        (lambda d: d.update(version=2), False),  # version 2 exactly with `distributed`
        (lambda d: d.update(version=99), False),
        (lambda d: d.update(version=True), False),
        (lambda d: d["metrics"].update(loss="nan"), False),  # only "NaN", "Infinity", "-Infinity"
        (lambda d: d["metrics"].update(loss="1.5"), False),
        (lambda d: d.update(step="5"), False),  # numbers are numbers
        (lambda d: d.update(step=True), False),
        (lambda d: d.update(epoch=1.5), False),
        (lambda d: d.update(surprise=1), False),  # unknown fields
        (lambda d: d["objects"].update({"../../etc/passwd": next(iter(d["objects"].values()))}), False),
        (lambda d: d["objects"].update({"A" * 64: next(iter(d["objects"].values()))}), False),
        (lambda d: next(iter(d["objects"].values())).update(raw_hash="xyz"), False),
        (lambda d: d["tensors"][0].update(shape=[-1]), False),
        (lambda d: d["tensors"][0].update(requires_grad="yes"), False),
        (lambda d: d.update(created_at="yesterday"), False),
        (lambda d: d.update(tags=[""]), False),
    ],
)
def test_schema_and_reader_agree_on_hostile_manifests(tmp_path, mutate, accepted):
    from jsonschema import ValidationError as SchemaError

    from ckptstore.format._manifest import parse_manifest

    validator = _validator("manifest")
    doc = json.loads(_written(tmp_path)["v1"])
    mutate(doc)
    data = json.dumps(doc).encode()
    if accepted:
        validator.validate(doc)
        parse_manifest(data)
    else:
        with pytest.raises(SchemaError):
            validator.validate(doc)
        with pytest.raises((ckptstore.IntegrityError, ckptstore.UnsupportedFormatError)):
            parse_manifest(data)


@pytest.mark.parametrize(
    "mutate,accepted",
    [
        (lambda d: None, True),
        (lambda d: d.update(retention=None), True),
        (_delete("format"), False),
        (_delete("version"), False),
        (lambda d: d.update(version=3), False),
        (lambda d: d.update(version=1), False),  # a version-1 config has no chunk_size or checksum
        (lambda d: d.update(version=1, chunk_size=None, checksum=None), True),
        (_delete("chunk_size"), False),  # version 2 requires both
        (_delete("checksum"), False),
        (lambda d: d.update(chunk_size=4096), False),
        (lambda d: d.update(hash="sha256"), False),
        (lambda d: d.update(extra=1), False),
    ],
)
def test_store_schema_and_reader_agree(tmp_path, mutate, accepted):
    from jsonschema import ValidationError as SchemaError

    from ckptstore.format._manifest import parse_store_config

    validator = _validator("store")
    doc = json.loads(_written(tmp_path)["store"])
    mutate(doc)
    data = json.dumps(doc).encode()
    if accepted:
        validator.validate(doc)
        parse_store_config(data)
    else:
        with pytest.raises(SchemaError):
            validator.validate(doc)
        with pytest.raises((ckptstore.IntegrityError, ckptstore.UnsupportedFormatError)):
            parse_store_config(data)


# -- bullet 9: $complex parts and the $dtype spelling are checked as the spec says ------------------
@pytest.mark.parametrize(
    "node,ok",
    [
        ({"$complex": [1.5, -2]}, complex(1.5, -2)),
        ({"$complex": [{"$float": "nan"}, {"$float": "-0.0"}]}, None),
        ({"$complex": ["1", 2]}, False),  # parts are numbers or $float, not strings
        ({"$complex": [True, 0]}, False),
        ({"$complex": [[1], 0]}, False),
        ({"$dtype": "float32"}, torch.float32),
        ({"$dtype": "uint16"}, torch.uint16),
        ({"$dtype": 5}, False),  # a name, as in tensor entries
        ({"$dtype": "torch.float32"}, "newer"),  # not the spelling: unknown name
        ({"$dtype": "float"}, "newer"),  # an alias, not torch's name of the dtype
    ],
)
def test_complex_parts_and_dtype_spelling(node, ok):
    from ckptstore.format._tree import decode_value

    if ok is False:
        with pytest.raises(ckptstore.IntegrityError):
            decode_value(node)
    elif ok == "newer":
        with pytest.raises(ckptstore.UnsupportedFormatError):
            decode_value(node)
    elif ok is None:
        v = decode_value(node)
        assert v.real != v.real and str(v.imag) == "-0.0"
    else:
        assert decode_value(node) == ok


def test_created_at_is_compared_as_a_time(two):
    from datetime import datetime, timedelta, timezone

    doc = _doc(two, 2)
    later = datetime.fromisoformat(doc["created_at"]) + timedelta(hours=1)
    doc["created_at"] = later.astimezone(timezone(timedelta(hours=-5))).isoformat()  # sorts first as text
    doc["stats"]["new_objects"] = 0  # another manifest of the same step
    key = _plant(two, json.dumps(doc).encode(), 2)
    assert ckptstore.info(two, step=2).key == key
    assert ckptstore.Store(two).latest().key == key


# -- torch.load parity, bullet 1: a module's state_dict keeps its _metadata --------------------------
def _bn_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))


def test_state_dict_metadata_survives_like_torch_load(store_uri, tmp_path):
    model = _bn_model()
    sd = model.state_dict()
    torch.save(sd, tmp_path / "sd.pt")
    want = torch.load(tmp_path / "sd.pt", weights_only=True)
    assert want._metadata["1"]["version"] == 2  # BatchNorm's version, as torch.load gives it

    ckptstore.save({"model": sd, "plain": {"a": 1}}, store_uri, step=1, rng=False)
    got = ckptstore.load(store_uri)["model"]
    assert type(got) is type(want) and list(got) == list(want)
    assert got._metadata == want._metadata and type(got._metadata) is type(want._metadata)
    assert ckptstore.Store(store_uri).manifest(1).version == 3  # the encoding needs a version-3 reader

    seen = []
    bn = _bn_model()[1]
    real = type(bn)._load_from_state_dict

    def spy(self, state_dict, prefix, local_metadata, *args, **kwargs):
        seen.append(local_metadata.get("version"))
        return real(self, state_dict, prefix, local_metadata, *args, **kwargs)

    fresh = _bn_model()
    type(fresh[1])._load_from_state_dict = spy
    try:
        fresh.load_state_dict(got)
    finally:
        type(fresh[1])._load_from_state_dict = real
    assert seen == [2]  # load_state_dict passes BatchNorm its version


def test_plain_states_stay_version_1(store_uri):
    from collections import OrderedDict

    ckptstore.save({"w": torch.ones(2), "o": OrderedDict(a=1)}, store_uri, step=1, rng=False)
    m = ckptstore.Store(store_uri).manifest(1)
    assert m.version == 1 and "$statedict" not in m.model_dump_json()


# -- torch.load parity, bullet 2: dense non-contiguous tensors keep their strides --------------------
def _strided_cases() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
        "channels_last_3d": torch.randn(2, 3, 2, 4, 5).to(memory_format=torch.channels_last_3d),
        "transposed": torch.randn(6, 7).t(),
        "permuted": torch.randn(2, 3, 4).permute(2, 0, 1),
        "size_one_dims": torch.randn(1, 5, 1).transpose(0, 2),
    }


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_dense_non_contiguous_tensors_keep_their_strides(store_uri, tmp_path, compression):
    cases = _strided_cases()
    torch.save(cases, tmp_path / "t.pt")
    want = torch.load(tmp_path / "t.pt", weights_only=True)
    ckptstore.save(cases, store_uri, step=1, rng=False, compression=compression)
    for mmap in (True, False):
        got = ckptstore.load(store_uri, mmap=mmap)
        for name, w in want.items():
            assert got[name].stride() == w.stride(), name
            assert torch.equal(got[name], w), name
    assert got["channels_last"].is_contiguous(memory_format=torch.channels_last)
    m = ckptstore.Store(store_uri).manifest(1)
    assert sum(b.nbytes for b in m.blobs) == sum(t.numel() * t.element_size() for t in cases.values())


def test_sparse_views_still_come_back_contiguous(store_uri):
    base = torch.arange(40.0).reshape(4, 10)
    view = base[:, ::3]  # not dense: only these elements are stored
    ckptstore.save({"v": view}, store_uri, step=1, rng=False)
    got = ckptstore.load(store_uri)["v"]
    assert torch.equal(got, view) and got.is_contiguous()
    assert ckptstore.Store(store_uri).manifest(1).blobs[0].nbytes == view.numel() * 4


# -- torch.load parity, bullet 3: sparse COO and CSR tensors round-trip ------------------------------
def _sparse_cases() -> dict[str, torch.Tensor]:
    i = torch.tensor([[0, 1, 1, 0], [2, 0, 2, 2]])
    v = torch.tensor([3.0, 4.0, 5.0, 6.0])
    uncoalesced = torch.sparse_coo_tensor(i, v, (2, 3))  # a duplicate index, not coalesced
    dense = torch.tensor([[0.0, 1.5, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    return {
        "coo": uncoalesced,
        "coo_coalesced": uncoalesced.coalesce(),
        "coo_hybrid": torch.sparse_coo_tensor(i[:, :2], torch.randn(2, 4), (2, 3, 4)).coalesce(),
        "coo_empty": torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (5, 5)),
        "csr": dense.to_sparse_csr(),
        "csr_int32": torch.sparse_csr_tensor(
            torch.tensor([0, 1, 1, 2], dtype=torch.int32),
            torch.tensor([1, 2], dtype=torch.int32),
            torch.tensor([7, 8], dtype=torch.int16),
            (3, 3),
        ),
    }


def test_sparse_tensors_round_trip_like_torch_load(store_uri, tmp_path):
    cases = _sparse_cases()
    torch.save(cases, tmp_path / "s.pt")
    want = torch.load(tmp_path / "s.pt", weights_only=True)
    ckptstore.save({"s": cases}, store_uri, step=1, rng=False)
    got = ckptstore.load(store_uri)["s"]
    for name, w in want.items():
        g = got[name]
        assert g.layout == w.layout and g.shape == w.shape and g.dtype == w.dtype, name
        if w.layout == torch.sparse_coo:
            assert g.is_coalesced() == w.is_coalesced(), name
            assert torch.equal(g._indices(), w._indices()) and torch.equal(g._values(), w._values()), name
        else:
            assert torch.equal(g.crow_indices(), w.crow_indices()), name
            assert torch.equal(g.col_indices(), w.col_indices()) and torch.equal(g.values(), w.values()), name
            assert g.crow_indices().dtype == w.crow_indices().dtype, name
        assert torch.equal(g.to_dense(), w.to_dense()), name
    assert ckptstore.Store(store_uri).manifest(1).version == 3


@pytest.mark.parametrize(
    "bad",
    [
        lambda n: n.update(size=[1, 1]),  # indices outside the size
        lambda n: n.update(layout="bsr"),
        lambda n: n.update(coalesced="yes"),
        lambda n: n.update(extra=1),
        lambda n: n.update(values=5),
    ],
)
def test_hostile_sparse_nodes_are_refused(store_uri, bad):
    ckptstore.save({"s": _sparse_cases()["coo"]}, store_uri, step=1, rng=False)
    doc = _doc(store_uri, 1)
    bad(doc["tree"]["s"]["$sparse"])
    doc["step"] = 9
    _plant(store_uri, json.dumps(doc).encode(), 9)
    with pytest.raises(ckptstore.IntegrityError):
        ckptstore.load(store_uri, step=9)
