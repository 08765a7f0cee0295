"""map_location and device resolution, tested on CPU with injected accelerator sets."""

from __future__ import annotations

import warnings

import pytest
import torch

import ckptstore
from ckptstore.pipeline._devices import Accelerators, Placement, auto_device

F32, F64 = torch.float32, torch.float64


def test_auto_prefers_cuda_then_mps_then_cpu():
    assert auto_device(Accelerators(cuda_count=2, mps=True)).type == "cuda"
    assert auto_device(Accelerators(cuda_count=0, mps=True)) == torch.device("mps")
    assert auto_device(Accelerators()) == torch.device("cpu")


def test_none_keeps_recorded_device_when_available():
    p = Placement(None, Accelerators(cuda_count=2))
    assert p.device_for("cuda:1", {F32}) == torch.device("cuda:1")
    assert p.device_for("cpu", {F32}) == torch.device("cpu")
    # a CUDA checkpoint on a Mac or a CPU box goes to the CPU
    p = Placement(None, Accelerators(mps=True))
    assert p.device_for("cuda:0", {F32}) == torch.device("cpu")
    assert Placement(None, Accelerators(cuda_count=1)).device_for("cuda:3", {F32}) == torch.device("cpu")


def test_explicit_device_wins_and_must_exist():
    acc = Accelerators(cuda_count=2)
    assert Placement("cuda:1", acc).device_for("cpu", {F32}) == torch.device("cuda:1")
    assert Placement(torch.device("cpu"), acc).device_for("cuda:0", {F32}) == torch.device("cpu")
    with pytest.raises(ckptstore.DeviceUnavailableError, match="cuda:2.*auto") as ei:
        Placement("cuda:2", acc)
    assert isinstance(ei.value, RuntimeError)
    with pytest.raises(ckptstore.DeviceUnavailableError):
        Placement("mps", Accelerators())
    with pytest.raises(ValueError, match="not a device"):
        Placement("gpu0", acc)
    with pytest.raises(TypeError):
        Placement(42, acc)  # type: ignore[arg-type]


def test_dict_remap():
    acc = Accelerators(cuda_count=1)
    p = Placement({"cuda:1": "cuda:0", "cuda:0": "cpu"}, acc)
    assert p.device_for("cuda:1", {F32}) == torch.device("cuda:0")
    assert p.device_for("cuda:0", {F32}) == torch.device("cpu")
    assert p.device_for("cpu", {F32}) == torch.device("cpu")
    with pytest.raises(ckptstore.DeviceUnavailableError):
        Placement({"cpu": "cuda:5"}, acc)


def test_mps_keeps_float64_on_cpu():
    acc = Accelerators(mps=True)
    for ml in ("auto", "mps", None, {"cuda:0": "mps"}):
        p = Placement(ml, acc)
        recorded = "mps" if ml is None else "cuda:0"
        assert p.device_for(recorded, {F32}).type == "mps"
        assert p.device_for(recorded, {F64}) == torch.device("cpu")
        assert p.device_for(recorded, {torch.complex128}) == torch.device("cpu")
        assert p.kept_on_cpu == 2


@pytest.mark.parametrize("ml", [None, "cpu", "auto", torch.device("cpu"), {"cpu": "cpu"}, {"cuda:0": "cpu"}])
def test_load_map_locations_on_this_machine(store_uri, ml):
    state = {"w": torch.randn(3), "d": torch.randn(2, dtype=torch.float64)}
    ckptstore.save(state, store_uri)
    back = ckptstore.load(store_uri, map_location=ml)
    assert back["w"].device.type == "cpu" and torch.equal(back["w"], state["w"])
    assert back["d"].dtype == torch.float64


def test_callable_map_location(store_uri):
    ckptstore.save({"w": torch.randn(3)}, store_uri)
    seen = []

    def fn(tensor, location):
        seen.append(location)
        return tensor * 2

    w = ckptstore.load(store_uri)["w"]
    assert torch.equal(ckptstore.load(store_uri, map_location=fn)["w"], w * 2)
    assert seen == ["cpu"]


def test_unavailable_explicit_device_fails_before_reading(store_uri):
    ckptstore.save({"w": torch.randn(3)}, store_uri)
    if torch.cuda.device_count() >= 8:
        pytest.skip("machine has 8 GPUs")
    with pytest.raises(ckptstore.DeviceUnavailableError):
        ckptstore.load(store_uri, map_location="cuda:7")


@pytest.mark.gpu
def test_cuda_round_trip(store_uri):
    state = {"w": torch.randn(1000, device="cuda"), "tied": None}
    state["tied"] = state["w"][:10]
    ckptstore.save(state, store_uri)
    back = ckptstore.load(store_uri)
    assert back["w"].device.type == "cuda"
    assert back["tied"].untyped_storage().data_ptr() == back["w"].untyped_storage().data_ptr()
    cpu = ckptstore.load(store_uri, map_location="cpu")
    assert torch.equal(cpu["w"], state["w"].cpu())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ckptstore.load(store_uri, map_location="auto")
