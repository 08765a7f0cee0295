"""Round trips: the state comes back with the same structure, types and bit-identical tensors."""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
import torch

import ckptstore
from ckptstore.format._tensors import supported_dtypes

from .conftest import train_tiny
from .helpers import assert_same


def _tensor_of(dtype: torch.dtype, shape=(3, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    n = int(np.prod(shape)) if shape else 1
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)


def test_model_optimizer_scheduler_round_trip(store_uri):
    model, opt, sched = train_tiny(steps=4)
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "step": 4,
        "loss_history": [1.5, 1.2, 0.9],
        "config": {"lr": 1e-2, "layers": (16, 32, 8)},
    }
    ckptstore.save(state, store_uri, step=4)
    back = ckptstore.load(store_uri)
    assert_same(state, back)
    # optimizer state keeps int keys; the restored objects accept the state
    assert list(back["optimizer"]["state"].keys()) == [0, 1, 2, 3, 4, 5]
    model2, opt2, sched2 = train_tiny(steps=0, seed=1)
    model2.load_state_dict(back["model"])
    opt2.load_state_dict(back["optimizer"])
    sched2.load_state_dict(back["scheduler"])
    assert sched2.last_epoch == sched.last_epoch
    x = torch.randn(2, 16)
    assert torch.equal(model(x), model2(x))


@pytest.mark.parametrize("dtype", supported_dtypes(), ids=str)
def test_every_dtype(store_uri, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # complex32 is "experimental"
        t = _tensor_of(dtype)
        state = {"t": t, "zero_d": _tensor_of(dtype, ()), "empty": torch.empty(0, 4, dtype=dtype)}
        ckptstore.save(state, store_uri)
        back = ckptstore.load(store_uri)
    assert_same(state, back)


def test_odd_shapes_and_views(store_uri):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    other = torch.arange(24, dtype=torch.int64).reshape(2, 3, 4)
    state = {
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0),
        "empty2": torch.zeros(3, 0, 2),
        "transposed": other.transpose(0, 2),  # non-contiguous, only tensor on its storage
        "expanded": torch.ones(1, 4).expand(3, 4),  # stride 0
        "conj": torch.randn(3, dtype=torch.complex64).conj(),
        "big_view": base[1:5, ::3],
    }
    ckptstore.save(state, store_uri)
    back = ckptstore.load(store_uri)
    for k, v in state.items():
        assert torch.equal(back[k], v.resolve_conj()), k
        assert back[k].dtype == v.dtype and back[k].shape == v.shape


def test_shared_storage_comes_back_shared(store_uri):
    emb = torch.randn(50, 8)
    head = emb  # tied weights: the same tensor twice
    state = {"emb": emb, "head": head, "rows": emb[10:20], "col": emb[:, 3], "other": torch.randn(4)}
    info = ckptstore.save(state, store_uri)
    back = ckptstore.load(store_uri)
    ptr = back["emb"].untyped_storage().data_ptr()
    for k in ("head", "rows", "col"):
        assert back[k].untyped_storage().data_ptr() == ptr, k
        assert torch.equal(back[k], state[k]), k
    assert back["other"].untyped_storage().data_ptr() != ptr
    # stored once: logical bytes = the shared storage + "other", not 4 copies
    assert info.size == emb.numel() * 4 + 16
    back["emb"][0, 0] = 123.0  # writes through the shared storage, as with torch.load
    assert back["head"][0, 0] == 123.0


def test_tied_model_weights(store_uri):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(20, 6)
            self.head = torch.nn.Linear(6, 20, bias=False)
            self.head.weight = self.emb.weight

    m = Tied()
    ckptstore.save({"model": m.state_dict()}, store_uri)
    sd = ckptstore.load(store_uri)["model"]
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    m2 = Tied()
    m2.load_state_dict(sd)
    assert torch.equal(m2.emb.weight, m.emb.weight)


def test_python_values_keep_their_types(store_uri):
    state = {
        "ints": {1: "a", 2: "b", -3: "c"},
        "mixed_keys": {1: 1, "1": 2, (1, 2): 3, None: 4, 2.5: 5},
        "bool_keys": {True: "yes", False: "no", 2: "two"},  # True == 1 in a dict: keep them apart from 1
        "dollar": {"$tensor": 1, "$x": "not a tag"},
        "tuple": (1, (2, 3), [4, (5,)]),
        "floats": [float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1e-310, 1.7976931348623157e308],
        "big_int": 2**100,
        "bools": [True, False],
        "none": None,
        "str": "héllo \x00 wörld \U0001f600",
        "bytes": b"\x00\xff" * 10,
        "bytearray": bytearray(b"abc"),
        "set": {1, 2, 3},
        "frozenset": frozenset({"a"}),
        "complex": complex(1.5, -2),
        "odict": collections.OrderedDict([("b", 1), ("a", 2)]),
        "dtype": torch.bfloat16,
        "device": torch.device("cuda", 1),
        "size": torch.Size([2, 3]),
        "np_scalar": np.float32(1.25),
        "np_int": np.int64(-7),
        "np_array": np.arange(12, dtype=np.float64).reshape(3, 4),
        "np_bool": np.array([True, False]),
        "empty_list": [],
        "empty_dict": {},
    }
    ckptstore.save(state, store_uri)
    back = ckptstore.load(store_uri)
    assert_same(state, back)
    assert list(back["odict"].keys()) == ["b", "a"]
    assert [type(k) for k in back["bool_keys"]] == [bool, bool, int]
    assert [type(k) for k in back["mixed_keys"]] == [int, str, tuple, type(None), float]


def test_parameters_and_requires_grad(store_uri):
    p = torch.nn.Parameter(torch.randn(3))
    q = torch.randn(2, requires_grad=True)
    ckptstore.save({"p": p, "q": q, "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False)}, store_uri)
    back = ckptstore.load(store_uri)
    assert isinstance(back["p"], torch.nn.Parameter) and back["p"].requires_grad
    assert type(back["q"]) is torch.Tensor and back["q"].requires_grad
    assert isinstance(back["frozen"], torch.nn.Parameter) and not back["frozen"].requires_grad


def test_chunked_and_packed_tensors(tmp_path):
    # tiny chunks: one tensor spans many objects; many small tensors share pack objects
    store = ckptstore.Store(tmp_path / "s", chunk_size=64 << 10)
    big = torch.randn(200_000)  # 800 KB -> 13 chunks of 64 KiB
    small = {f"s{i}": torch.full((i + 1,), float(i)) for i in range(50)}
    store.save({"big": big, **small})
    m = store.manifest()
    big_blob = m.blobs[m.tensors[0].blob]
    assert len(big_blob.segments) == 13
    small_objects = {m.blobs[e.blob].segments[0].object for e in m.tensors[1:]}
    assert len(small_objects) == 1  # all 50 packed into one object
    back = store.load()
    assert torch.equal(back["big"], big)
    for k, v in small.items():
        assert torch.equal(back[k], v)


@pytest.mark.parametrize("uri_kind", ["path", "file", "memory", "pathlike"])
def test_uri_kinds(tmp_path, uri_kind):
    import uuid

    p = tmp_path / "store"
    uri = {"path": str(p), "file": f"file://{p}", "memory": f"memory://ckpt-{uuid.uuid4().hex}/run", "pathlike": p}[
        uri_kind
    ]
    state = {"w": torch.randn(10, 10), "step": 1}
    ckptstore.save(state, uri, step=1)
    ckptstore.save(state, uri, step=2)
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [1, 2]
    assert_same(ckptstore.load(uri, step=1), state)


def test_steps_metadata_and_listing(store_uri):
    a = ckptstore.save({"x": torch.zeros(2)}, store_uri)
    b = ckptstore.save(
        {"x": torch.ones(2)},
        store_uri,
        step=500,
        epoch=2,
        config={"lr": 0.1, "bs": 32},
        metrics={"loss": torch.tensor(1.9), "acc": np.float32(0.5)},
        tags=["best"],
        meta={"total_steps": 1000},
    )
    c = ckptstore.save({"x": torch.full((2,), 2.0)}, store_uri)
    assert (a.step, b.step, c.step) == (0, 500, 501)  # no step: next after the newest
    infos = ckptstore.list_checkpoints(store_uri)
    assert [i.step for i in infos] == [0, 500, 501]
    i = infos[1]
    assert i.epoch == 2 and i.tags == ("best",) and i.config == {"lr": 0.1, "bs": 32}
    assert i.metrics == pytest.approx({"loss": 1.9, "acc": 0.5})
    assert i.meta == {"total_steps": 1000}
    assert i.id == b.id and len(i.id) == 64 and i.short_id == i.id[:12]
    assert i.created_at.tzinfo is not None and a.created_at <= i.created_at <= c.created_at
    assert torch.equal(ckptstore.load(store_uri, step=500)["x"], torch.ones(2))
    assert torch.equal(ckptstore.load(store_uri, id=b.id[:10])["x"], torch.ones(2))
    assert torch.equal(ckptstore.load(store_uri)["x"], torch.full((2,), 2.0))


def test_same_step_twice_newest_wins(store_uri):
    ckptstore.save({"v": 1}, store_uri, step=7)
    second = ckptstore.save({"v": 2}, store_uri, step=7)
    assert ckptstore.load(store_uri, step=7) == {"v": 2}
    assert ckptstore.info(store_uri, step=7).id == second.id
    assert len(ckptstore.list_checkpoints(store_uri)) == 2


def test_store_is_reusable_context_manager(tmp_path):
    with ckptstore.Store(tmp_path / "s") as store:
        assert not store.exists()
        for s in range(3):
            store.save({"w": torch.full((4,), float(s))}, step=s * 10)
        assert store.latest().step == 20
        assert torch.equal(store.load(10)["w"], torch.full((4,), 1.0))
        assert repr(store).startswith("Store(")
    removed = ckptstore.Store(tmp_path / "s").forget(step=20)
    assert removed.step == 20
    assert ckptstore.info(tmp_path / "s").step == 10


def test_compressed_round_trip(store_uri):
    model, opt, _ = train_tiny()
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "zeros": torch.zeros(300_000)}
    info = ckptstore.save(state, store_uri, compression="zstd")
    assert info.stored_bytes < info.size  # the zeros compress
    assert_same(state, ckptstore.load(store_uri))
    codecs = {o.codec for o in ckptstore.Store(store_uri).manifest().objects.values()}
    assert "zstd" in "".join(codecs)
