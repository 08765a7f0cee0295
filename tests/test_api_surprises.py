"""Places where the library surprised a new user: what it says, what it accepts, what it documents."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import warnings
from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore import BackupWarning, CkptstoreWarning

ROOT = Path(__file__).resolve().parent.parent


def _state() -> dict:
    return {"model": {"w": torch.arange(6.0)}}


# -- a store is a folder -----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.pt", "ckpt.pth", "weights.bin", "last.ckpt", "model.safetensors"])
def test_saving_to_a_file_name_warns_that_a_store_is_a_folder(tmp_path, name):
    with pytest.warns(CkptstoreWarning, match="is a folder") as rec:
        ckptstore.save(_state(), tmp_path / name)
    assert len(rec) == 1 and "torch.load" in str(rec[0].message)
    assert (tmp_path / name).is_dir()
    assert torch.equal(ckptstore.load(tmp_path / name)["model"]["w"], torch.arange(6.0))


def test_a_plain_folder_name_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckptstore.save(_state(), tmp_path / "runs" / "exp1.v2")


# -- configs ---------------------------------------------------------------------------------
@dataclasses.dataclass
class TrainConfig:
    lr: float = 1e-3
    layers: tuple = (4, 8)
    name: str = "tiny"


def test_save_takes_an_argparse_namespace_and_a_dataclass_as_config(tmp_path):
    ns = argparse.Namespace(lr=0.1, batch=32, tags=["a", "b"])
    info = ckptstore.save(_state(), tmp_path / "s", config=ns, step=1)
    assert info.config == {"lr": 0.1, "batch": 32, "tags": ["a", "b"]}
    info = ckptstore.save(_state(), tmp_path / "s", config=TrainConfig(), step=2)
    assert info.config == {"lr": 1e-3, "layers": (4, 8), "name": "tiny"}
    nested = {"train": TrainConfig(lr=0.5), "args": argparse.Namespace(seed=3)}
    info = ckptstore.save(_state(), tmp_path / "s", config=nested, step=3)
    assert ckptstore.info(tmp_path / "s", 3).config == {
        "train": {"lr": 0.5, "layers": (4, 8), "name": "tiny"},
        "args": {"seed": 3},
    }
    with pytest.raises(ckptstore.UnsupportedValueError):  # other objects are still refused
        ckptstore.save(_state(), tmp_path / "s", config=object(), step=4)


# -- a fallback that worked says so, once ----------------------------------------------------
def test_a_fallback_that_worked_says_so_once_without_advice(tmp_path, caplog):
    backup = tmp_path / "backup"
    ckptstore.save(_state(), backup, step=5)
    with caplog.at_level(logging.WARNING, logger="ckptstore"), pytest.warns(BackupWarning) as rec:
        state = ckptstore.load(tmp_path / "gone", fallback=backup)
    assert torch.equal(state["model"]["w"], torch.arange(6.0))
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "loaded from the fallback" in msg and "gone" in msg
    assert "save a checkpoint there first" not in msg and "Check the path" not in msg
    assert not [r for r in caplog.records if "fallback" in r.getMessage()]  # not a log line as well


# -- every public function documents its parameters ------------------------------------------
def _undocumented(fn) -> list[str]:
    doc = inspect.getdoc(fn) or ""
    return [
        p
        for p in inspect.signature(fn).parameters
        if p not in ("self", "cls") and f"``{p}``" not in doc and f"``{p}=" not in doc
    ]


def test_every_public_function_documents_its_parameters():
    missing = {}
    for name in ckptstore.__all__:
        obj = getattr(ckptstore, name)
        if inspect.isfunction(obj) and _undocumented(obj):
            missing[name] = _undocumented(obj)
        elif inspect.isclass(obj) and not issubclass(obj, BaseException):
            for mname, member in vars(obj).items():
                if inspect.isfunction(member) and not mname.startswith("_") and _undocumented(member):
                    missing[f"{name}.{mname}"] = _undocumented(member)
    for name in ("import_checkpoint", "export_checkpoint", "import_torch_file"):
        fn = getattr(ckptstore.interop, name)
        if _undocumented(fn):
            missing[f"interop.{name}"] = _undocumented(fn)
    assert not missing, missing


def test_api_md_names_every_public_error():
    text = (ROOT / "docs" / "api.md").read_text()
    for name in ckptstore.__all__:
        obj = getattr(ckptstore, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert name in text, f"docs/api.md does not mention {name}"


# -- "new" is at most "size" -----------------------------------------------------------------
def test_new_bytes_never_exceed_the_logical_size(tmp_path):
    """Small tensors share packs with alignment padding; padding is not new data."""
    infos = []
    for i in range(3):
        state = {
            "a": torch.zeros(3),
            "b": torch.ones(2, dtype=torch.int8),
            "s": torch.tensor(1.0 + i),
            "h": torch.arange(5, dtype=torch.float64) * i,
            "z": torch.randn(50_000, generator=torch.Generator().manual_seed(i)),  # compressed or not
        }
        infos.append(ckptstore.save(state, tmp_path / "s", step=i, compression=i == 2))
    for info in infos:
        assert 0 < info.new_bytes <= info.size, (info.step, info.new_bytes, info.size)


def test_store_save_and_sessions_take_a_namespace_and_a_dataclass_too(tmp_path):
    s = ckptstore.Store(tmp_path / "s")
    assert s.save(_state(), config=argparse.Namespace(lr=0.5), step=1).config == {"lr": 0.5}
    with s.session() as sess:
        info = sess.commit(sess.stage(_state()), config=TrainConfig(name="big"), step=2)
    assert info.config == {"lr": 1e-3, "layers": (4, 8), "name": "big"}


def test_store_save_to_a_file_name_warns_once_when_it_creates_the_store(tmp_path):
    s = ckptstore.Store(tmp_path / "run.ckpt")
    with pytest.warns(CkptstoreWarning, match="is a folder"):
        s.save(_state(), step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.save(_state(), step=2)  # the store exists now: nothing more to say


def test_a_misspelled_store_argument_on_a_local_path_is_refused(tmp_path):
    # extra keywords are fsspec options; fsspec's local filesystem would drop them without a word,
    # so a typo (compresion=) used to give an uncompressed store with no retention
    with pytest.raises(ckptstore.InvalidArgumentError) as ei:
        ckptstore.Store(str(tmp_path / "s"), compresion="zstd")
    assert "compresion" in str(ei.value) and isinstance(ei.value, ckptstore.CkptstoreError)
    with pytest.raises(ValueError, match="anon"):
        ckptstore.Store(f"file://{tmp_path}/s", storage_options={"anon": True})
    ckptstore.Store(str(tmp_path / "s"), storage_options={})  # nothing given: fine
    ckptstore.Store(f"file://{tmp_path}/s", auto_mkdir=True)  # an option fsspec's local filesystem reads


def test_integer_steps_from_numpy_or_torch_are_steps_and_the_range_is_named(tmp_path):
    import numpy as np

    uri = str(tmp_path / "s")
    assert ckptstore.save({"w": torch.zeros(3)}, uri, step=np.int64(8)).step == 8
    assert ckptstore.save({"w": torch.zeros(3)}, uri, step=torch.tensor(9)).step == 9
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [8, 9]
    for bad in (np.float64(3.0), torch.tensor([1, 2]), torch.tensor(2.5), 10**20, -1):
        with pytest.raises(ValueError, match="step must be an int from 0 to 99999999999999999999"):
            ckptstore.save({"w": torch.zeros(3)}, uri, step=bad)
    with pytest.raises(ValueError, match="metrics must be a mapping"):
        ckptstore.save({"w": torch.zeros(3)}, uri, metrics=0.5)  # type: ignore[arg-type]


def test_map_location_meta_says_it_holds_no_data(tmp_path):
    ckptstore.save({"w": torch.zeros(3)}, str(tmp_path / "s"), step=1)
    with pytest.raises(ckptstore.DeviceUnavailableError, match="meta device, which holds no data"):
        ckptstore.load(str(tmp_path / "s"), map_location="meta")


@pytest.mark.parametrize("workers", [0, -1, 2.5, True])
def test_store_workers_must_be_a_positive_int(tmp_path, workers):
    with pytest.raises(ValueError, match="workers must be an int of at least 1"):
        ckptstore.Store(str(tmp_path / "s"), workers=workers)
