"""Errors: one root, stdlib leaves, messages that name the path and say what to do."""

from __future__ import annotations

import os

import pytest
import torch

import ckptstore


def test_missing_path_names_it(tmp_path):
    p = tmp_path / "nope" / "run"
    with pytest.raises(ckptstore.StoreNotFoundError) as ei:
        ckptstore.load(p)
    assert str(p) in str(ei.value) and "does not exist" in str(ei.value)
    assert isinstance(ei.value, FileNotFoundError) and isinstance(ei.value, ckptstore.CkptstoreError)
    with pytest.raises(FileNotFoundError):
        ckptstore.list_checkpoints(p)


def test_folder_that_is_not_a_store(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ckptstore.StoreNotFoundError, match="not a checkpoint store"):
        ckptstore.load(tmp_path / "plain")


def test_file_instead_of_store(tmp_path):
    f = tmp_path / "final_model.pt"
    torch.save({"w": torch.ones(1)}, f)
    with pytest.raises(ckptstore.StoreNotFoundError, match="is a file.*ckptstore import"):
        ckptstore.load(f)
    with pytest.raises(ckptstore.StoreNotFoundError):
        ckptstore.save({"w": torch.ones(1)}, f)


def test_checkpoint_not_found(store_uri):
    ckptstore.save({"a": 1}, store_uri, step=5)
    with pytest.raises(ckptstore.CheckpointNotFoundError, match="no checkpoint at step 6.*5") as ei:
        ckptstore.load(store_uri, step=6)
    assert isinstance(ei.value, LookupError)
    with pytest.raises(ckptstore.CheckpointNotFoundError):
        ckptstore.load(store_uri, id="ffff")


def test_empty_store(tmp_path):
    s = ckptstore.Store(tmp_path / "s")
    s.save({"a": 1})
    s.forget(step=0)
    with pytest.raises(ckptstore.CheckpointNotFoundError, match="no checkpoints yet"):
        s.load()


def test_unsupported_value_names_its_path(store_uri):
    state = {"model": {}, "config": {"lr": 0.1, "callback": lambda x: x}}
    with pytest.raises(ckptstore.UnsupportedValueError) as ei:
        ckptstore.save(state, store_uri)
    assert ei.value.path == "state['config']['callback']"
    assert "state['config']['callback']" in str(ei.value) and "allow_pickle" in str(ei.value)
    assert isinstance(ei.value, TypeError)
    assert not os.path.exists(os.path.join(store_uri, "manifests"))  # nothing half-written


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "value,fragment",
    [
        (object(), "object"),
        ([1, {2: open}], "[1][2]"),
        (torch.zeros(3, 3).to_sparse_csc(), "layout"),  # COO and CSR are stored (format.md §5)
        (torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8), "quantized"),
        (torch.empty(2, device="meta"), "meta"),
    ],
)
def test_unsupported_values(store_uri, value, fragment):
    with pytest.raises(ckptstore.UnsupportedValueError, match=None) as ei:
        ckptstore.save({"x": value}, store_uri)
    assert fragment in str(ei.value)


def test_cycle_is_refused(store_uri):
    a: list = []
    a.append(a)
    with pytest.raises(ckptstore.UnsupportedValueError, match="contains itself"):
        ckptstore.save({"a": a}, store_uri)


class Custom:
    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return isinstance(other, Custom) and other.v == self.v


def test_pickle_opt_in_on_both_sides(store_uri):
    ckptstore.save({"obj": Custom(3), "t": torch.ones(2)}, store_uri, allow_pickle=True)
    with pytest.raises(ckptstore.PickleNotAllowedError, match="allow_pickle=True"):
        ckptstore.load(store_uri)
    back = ckptstore.load(store_uri, allow_pickle=True)
    assert back["obj"] == Custom(3)


def test_bad_arguments(store_uri):
    with pytest.raises(ValueError):
        ckptstore.save({}, store_uri, step=-1)
    with pytest.raises(ValueError):
        ckptstore.save({}, store_uri, metrics={"loss": "low"})
    with pytest.raises(ValueError):
        ckptstore.save({}, store_uri, tags=[""])
    with pytest.raises(ValueError, match="unknown compression"):
        ckptstore.save({}, store_uri, compression="lz77")
    with pytest.raises(TypeError):
        ckptstore.Store(None)  # type: ignore[arg-type]


def test_missing_backend_package_says_what_to_install():
    with pytest.raises((ckptstore.BackendUnavailableError, ValueError)) as ei:
        ckptstore.Store("nosuchproto://bucket/x")
    assert "nosuchproto" in str(ei.value)


def test_hierarchy():
    for name in ckptstore.__all__:
        obj = getattr(ckptstore, name)
        if isinstance(obj, type) and issubclass(obj, BaseException) and not issubclass(obj, Warning):
            assert issubclass(obj, ckptstore.CkptstoreError)
            if obj is not ckptstore.CkptstoreError:
                stdlib = [
                    b
                    for b in obj.__mro__[1:]
                    if b.__module__ == "builtins" and b not in (Exception, BaseException, object)
                ]
                assert stdlib, f"{name} subclasses no stdlib error"


def test_every_warning_is_a_ckptstore_warning():
    warning_types = [
        getattr(ckptstore, n)
        for n in ckptstore.__all__
        if isinstance(getattr(ckptstore, n), type) and issubclass(getattr(ckptstore, n), Warning)
    ]
    assert ckptstore.CkptstoreWarning in warning_types and ckptstore.BackupWarning in warning_types
    for w in warning_types:
        assert issubclass(w, ckptstore.CkptstoreWarning) and issubclass(w, UserWarning)
    assert issubclass(ckptstore.BackupWarning, RuntimeWarning)  # what code catching RuntimeWarning expects
