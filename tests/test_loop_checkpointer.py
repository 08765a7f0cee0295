"""Checkpointer: triggers, resume, config drift, progress, fallback (in-process, tiny models)."""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import ckptstore
from ckptstore.adapters.loop import Checkpointer, ConfigDriftWarning, ResumeFallbackWarning, find_resumable


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _setup(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return model, opt, sched


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any) -> float:
    x = torch.randn(8, 4)
    loss = model(x).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item()


def _steps(uri: Path) -> list[int]:
    return [i.step for i in ckptstore.list_checkpoints(uri)]


def _triggers(uri: Path) -> dict[int, str]:
    return {i.step: i.meta["trigger"] for i in ckptstore.list_checkpoints(uri)}


# -- triggers ---------------------------------------------------------------------------------
def test_every_steps_and_final_on_close(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    ck = Checkpointer(tmp_path, every_steps=3, signals=())
    for i in range(7):
        _train_step(model, opt, sched)
        ck.step(i, model=model, optimizer=opt, scheduler=sched)
    ck.close()
    assert _triggers(tmp_path) == {3: "every_steps", 6: "every_steps", 7: "final"}


def test_every_seconds_uses_wall_time_since_last_save(tmp_path: Path) -> None:
    clock = Clock()
    model, opt, sched = _setup()
    ck = Checkpointer(tmp_path, every_seconds=300, save_on_close=False, signals=(), clock=clock)
    for i in range(6):
        clock.t += 100 if i != 4 else 400
        ck.step(i, model=model)
    ck.close()
    # t=100,200,300 -> save at step 3; then 100 (4), 500 (5) -> save at step 5
    assert _triggers(tmp_path) == {3: "every_seconds", 5: "every_seconds"}


def test_epoch_end_total_steps_and_no_step_saved_twice(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    ck = Checkpointer(tmp_path, every_steps=2, on_epoch_end=True, total_steps=6, signals=())
    for epoch in range(2):
        for j in range(3):
            i = epoch * 3 + j
            _train_step(model, opt, sched)
            ck.step(i, epoch=epoch, model=model, optimizer=opt)
        assert ck.epoch_end(epoch) == (epoch == 0)  # step 6 was saved by every_steps already
    assert ck.save() is False  # on demand, but step 6 is saved
    ck.close()
    assert _triggers(tmp_path) == {2: "every_steps", 3: "epoch_end", 4: "every_steps", 6: "every_steps+final"}
    infos = {i.step: i for i in ckptstore.list_checkpoints(tmp_path)}
    assert infos[3].epoch == 0 and infos[3].meta["epoch_done"] is True
    assert infos[4].epoch == 1 and infos[4].meta["epoch_done"] is False
    assert infos[6].meta["total_steps"] == 6 and infos[6].meta["progress"] == 1.0
    assert infos[2].meta["progress"] == pytest.approx(2 / 6, abs=1e-6)


def test_on_demand_save_with_tags_and_step_flag(tmp_path: Path) -> None:
    model, _, _ = _setup()
    ck = Checkpointer(tmp_path, signals=(), save_on_close=False, tags=["run7"])
    ck.step(0, model=model)
    assert ck.step(1, save=True) is True
    assert ck.save(tags=["pinned"]) is False  # step 2 already saved
    ck.step(2)
    assert ck.save(tags=["pinned"], wait=True) is True
    ck.close()
    infos = ckptstore.list_checkpoints(tmp_path)
    assert [(i.step, i.tags) for i in infos] == [(2, ("run7",)), (3, ("run7", "pinned"))]


def test_metrics_recorded_and_best_saved_when_it_improves(tmp_path: Path) -> None:
    model, _, _ = _setup()
    # keep the 3 best, so retention keeps every checkpoint the improvements wrote
    ck = Checkpointer(
        tmp_path, every_steps=10, keep_best=("val_loss", "min", 3), save_best=True, save_on_close=False, signals=()
    )
    vals = [5.0, 4.0, 4.5, 3.0, 3.5]
    for i, v in enumerate(vals):
        ck.step(i, model=model, metrics={"val_loss": torch.tensor(v), "loss": v * 2})
    ck.close()
    infos = ckptstore.list_checkpoints(tmp_path)
    assert [(i.step, i.metrics["val_loss"]) for i in infos] == [(1, 5.0), (2, 4.0), (4, 3.0)]
    assert infos[0].metrics["loss"] == 10.0 and ck.best is not None and ck.best.step == 4


def test_keep_best_one_leaves_only_the_best(tmp_path: Path) -> None:
    model, _, _ = _setup()
    ck = Checkpointer(
        tmp_path, every_steps=10, keep_best=("val_loss", "min"), save_best=True, save_on_close=False, signals=()
    )
    for i, v in enumerate([5.0, 4.0, 4.5, 3.0, 3.5]):
        ck.step(i, model=model, metrics={"val_loss": v})
    ck.close()
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path)] == [4]


def test_keep_best_with_only_a_metric_name_asks_for_the_direction(tmp_path: Path) -> None:
    # a bare name used to mean "min": keep_best="accuracy" kept the worst checkpoints
    with pytest.raises(ValueError, match=r"\('accuracy', 'max'\)"):
        Checkpointer(tmp_path, every_steps=10, keep_best="accuracy", signals=())
    assert not (tmp_path / "ckptstore.json").exists()


# -- resume -----------------------------------------------------------------------------------
def test_nothing_to_resume_returns_zero(tmp_path: Path) -> None:
    model, opt, _ = _setup()
    for uri in (tmp_path / "missing", tmp_path):
        ck = Checkpointer(uri, signals=())
        assert ck.resume(model=model, optimizer=opt) == 0
        assert ck.resumed is None and ck.start_step == 0 and ck.start_epoch == 0
        ck.close(final=False)
    assert find_resumable(ckptstore.Store(tmp_path / "nothing")) is None


def test_resume_restores_everything(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    hist: dict[str, Any] = {"losses": [], "loader_pos": 0}
    ck = Checkpointer(tmp_path, every_steps=4, signals=())
    ck.resume(model=model, optimizer=opt, scheduler=sched, scaler=scaler, extra=hist)
    for i in range(4):
        hist["losses"].append(_train_step(model, opt, sched))
        hist["loader_pos"] += 8
        ck.step(i, epoch=1)
    ck.close()
    want_model = {k: v.clone() for k, v in model.state_dict().items()}
    want_opt = opt.state_dict()
    random.random()
    want_rand = (torch.rand(3), random.random())  # what the RNGs give after the checkpoint

    model2, opt2, sched2 = _setup(seed=99)
    scaler2 = torch.amp.GradScaler("cpu", init_scale=1.0)
    hist2: dict[str, Any] = {"losses": [], "loader_pos": 0, "new_key": 1}
    ck2 = Checkpointer(tmp_path, signals=())
    assert ck2.resume(model=model2, optimizer=opt2, scheduler=sched2, scaler=scaler2, extra=hist2) == 4
    r = ck2.resumed
    assert r is not None and r.step == 4 and r.epoch == 1 and r.next_epoch == 1
    assert set(r.restored) == {"model", "optimizer", "scheduler", "scaler"} and r.missing == () and r.skipped == ()
    for k, v in model2.state_dict().items():
        assert torch.equal(v, want_model[k])
    st = opt2.state_dict()["state"]
    for pid, s in want_opt["state"].items():
        assert torch.equal(st[pid]["exp_avg"], s["exp_avg"]) and torch.equal(st[pid]["exp_avg_sq"], s["exp_avg_sq"])
    assert sched2.last_epoch == 4 and sched2.get_last_lr() == sched.get_last_lr()
    assert scaler2.get_scale() == 1024.0
    assert hist2 == {**hist, "new_key": 1}
    random.random()
    got = (torch.rand(3), random.random())
    assert torch.equal(got[0], want_rand[0]) and got[1] == want_rand[1]
    ck2.close(final=False)


def test_resume_explicit_step_and_id(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    ck = Checkpointer(tmp_path, every_steps=2, signals=())
    snaps = {}
    for i in range(6):
        _train_step(model, opt, sched)
        ck.step(i, model=model, optimizer=opt)
        snaps[i + 1] = model[0].weight.detach().clone()
    ck.close()
    info4 = ckptstore.info(tmp_path, 4)
    for kw in ({"step": 2}, {"id": info4.short_id}):
        m2, o2, _ = _setup(seed=5)
        ck2 = Checkpointer(tmp_path, signals=())
        got = ck2.resume(model=m2, optimizer=o2, **kw)
        assert torch.equal(m2[0].weight, snaps[got])
        ck2.close(final=False)
    with pytest.raises(ckptstore.CheckpointNotFoundError):
        Checkpointer(tmp_path, signals=()).resume(model=m2, step=3)


def test_resume_epoch_end_continues_with_next_epoch(tmp_path: Path) -> None:
    model, _, _ = _setup()
    ck = Checkpointer(tmp_path, on_epoch_end=True, signals=())
    ck.step(0, epoch=0, model=model)
    ck.epoch_end(0)
    ck.close()
    ck2 = Checkpointer(tmp_path, signals=())
    assert ck2.resume(model=model) == 1 and ck2.start_epoch == 1 and ck2.resumed.epoch == 0  # type: ignore[union-attr]
    ck2.close(final=False)


def test_missing_objects_warn_and_foreign_checkpoint_refused(tmp_path: Path) -> None:
    model, opt, sched = _setup()
    ck = Checkpointer(tmp_path / "a", signals=())
    ck.step(0, model=model)
    ck.close()
    ck2 = Checkpointer(tmp_path / "a", signals=())
    with pytest.warns(UserWarning, match="no state for optimizer"):
        ck2.resume(model=model, optimizer=opt)
    assert ck2.resumed is not None and ck2.resumed.missing == ("optimizer",)
    ckptstore.save({"weights": torch.zeros(2)}, tmp_path / "b")
    with pytest.raises(ValueError, match="written by a Checkpointer"):
        Checkpointer(tmp_path / "b", signals=()).resume(model=model)
    with pytest.raises(TypeError, match="extra="):
        Checkpointer(tmp_path / "c", signals=()).resume(counter=3)


def test_config_drift_warns_risky_and_deliberate_and_can_raise(tmp_path: Path) -> None:
    model, _, _ = _setup()
    cfg = {"lr": 1e-3, "batch_size": 32, "model": {"name": "tiny", "seq_len": 128}, "epochs": 3, "note": "a"}
    ck = Checkpointer(tmp_path, config=cfg, signals=())
    ck.step(0, model=model)
    ck.close()
    assert ckptstore.info(tmp_path).config == cfg
    new = {**cfg, "lr": 5e-4, "epochs": 5, "batch_size": 64, "model": {"name": "tiny", "seq_len": 256}}
    ck2 = Checkpointer(tmp_path, config=new, signals=())
    with pytest.warns(ConfigDriftWarning) as rec:
        ck2.resume(model=model)
    msg = str(rec[0].message)
    assert "RISKY" in msg and "batch_size 32 -> 64" in msg and "model.seq_len 128 -> 256" in msg
    assert "deliberate: epochs 3 -> 5, lr 0.001 -> 0.0005" in msg and "note" not in msg
    drift = ck2.resumed.drift  # type: ignore[union-attr]
    assert drift is not None and set(drift.risky) == {"batch_size", "model.seq_len"}
    ck2.close(final=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Checkpointer(tmp_path, config=cfg, signals=()).resume(model=model)  # unchanged: silent
    with pytest.raises(ValueError, match="batch_size"):
        Checkpointer(tmp_path, config=new, config_drift="raise", signals=()).resume(model=model)


def test_map_location_auto_follows_the_model(tmp_path: Path) -> None:
    model, _, _ = _setup()
    ck = Checkpointer(tmp_path, signals=())
    ck.step(0, model=model)
    ck.close()
    ck2 = Checkpointer(tmp_path, signals=())
    assert ck2._location() == "auto"
    ck2.resume(model=model)
    assert ck2._location() == torch.device("cpu")
    assert all(t.device.type == "cpu" for t in ck2.resumed.state["model"].values())  # type: ignore[union-attr]


# -- damaged checkpoints ------------------------------------------------------------------------
def _three_checkpoints(uri: Path) -> torch.nn.Module:
    model, opt, sched = _setup()
    ck = Checkpointer(uri, every_steps=1, signals=())
    for i in range(3):
        _train_step(model, opt, sched)
        ck.step(i, model=model, optimizer=opt)
    ck.close()
    return model


def _corrupt_object_of(uri: Path, step: int) -> None:
    with warnings.catch_warnings():  # a manifest damaged earlier is skipped here: not what is under test
        warnings.simplefilter("ignore", ckptstore.CkptstoreWarning)
        infos = {i.step: i for i in ckptstore.list_checkpoints(uri)}
    m = json.loads((uri / infos[step].key).read_bytes())
    others = set()
    for s, i in infos.items():
        if s != step:
            others |= set(json.loads((uri / i.key).read_bytes())["objects"])
    key = sorted(set(m["objects"]) - others)[0]
    p = uri / "objects" / key[:2] / key
    p.write_bytes(p.read_bytes()[:-1])  # truncated


def test_fallback_names_both_checkpoints(tmp_path: Path) -> None:
    _three_checkpoints(tmp_path)
    _corrupt_object_of(tmp_path, 3)
    bad, good = ckptstore.info(tmp_path, 3), ckptstore.info(tmp_path, 2)
    model, opt, _ = _setup(seed=3)
    ck = Checkpointer(tmp_path, signals=())
    with pytest.warns(ResumeFallbackWarning) as rec:
        assert ck.resume(model=model, optimizer=opt) == 2
    msg = str(rec[0].message)
    assert f"step 3 ({bad.short_id})" in msg and f"step 2 ({good.short_id})" in msg
    assert [d.step for d in ck.resumed.skipped] == [3]  # type: ignore[union-attr]
    ck.close(final=False)
    # asked for by name: no fallback
    with pytest.raises(ckptstore.IntegrityError):
        Checkpointer(tmp_path, signals=()).resume(model=model, step=3)


def test_fallback_over_several_and_all_damaged_raises(tmp_path: Path) -> None:
    _three_checkpoints(tmp_path)
    _corrupt_object_of(tmp_path, 3)
    newest = sorted((tmp_path / "manifests").glob("*.json"))
    newest[1].write_bytes(b"{}")  # step 2's manifest
    with pytest.warns(ckptstore.CkptstoreWarning) as caught:
        r = find_resumable(ckptstore.Store(tmp_path))
    said = [(w.category, str(w.message)) for w in caught]
    assert any(c is ResumeFallbackWarning and "Also damaged: step 2" in m for c, m in said), said
    assert any("skipping checkpoint at step 2" in m for c, m in said), said
    assert r is not None and r.info.step == 1 and [d.step for d in r.skipped] == [3, 2]
    _corrupt_object_of(tmp_path, 1)
    with (
        pytest.raises(ckptstore.IntegrityError, match="no checkpoint .* verifies"),
        pytest.warns(ckptstore.CkptstoreWarning, match="skipping checkpoint at step 2"),
    ):
        find_resumable(ckptstore.Store(tmp_path))


def test_checkpoint_rewritten_after_fallback_verifies(tmp_path: Path) -> None:
    store = ckptstore.Store(tmp_path)
    w = torch.arange(4096, dtype=torch.float32)
    store.save({"model": {"w": w}}, step=1)
    store.save({"model": {"w": w + 1}}, step=2)
    _corrupt_object_of(tmp_path, 2)
    model = torch.nn.Module()
    model.register_buffer("w", torch.zeros(4096))
    ck = Checkpointer(tmp_path, signals=())
    with pytest.warns(ResumeFallbackWarning):
        assert ck.resume(model=model) == 1
    model.w += 1  # the lost step runs again, deterministically
    ck.step(1)
    ck.close()
    ckptstore.Store(tmp_path).verify(id=ck.last_saved.id)  # type: ignore[union-attr]


def test_a_file_given_as_the_store_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "checkpoint_step_4000.pt"
    torch.save({"model": {}}, f)
    with pytest.raises(ckptstore.StoreNotFoundError, match="is a file, not a checkpoint store"):
        Checkpointer(f, signals=()).resume(model=torch.nn.Linear(2, 2))


def test_find_resumable_takes_a_uri_and_unpacks(tmp_path: Path) -> None:
    _three_checkpoints(tmp_path)
    found = find_resumable(str(tmp_path))
    assert found is not None
    info, state = found
    assert info.step == 3 and set(state) == {"model", "optimizer"} and found.skipped == ()


def test_rng_states_from_another_device_kind_are_accounted_for(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    model = torch.nn.Linear(2, 2)
    rng = ckptstore.capture_rng_state()
    from_gpu = rng.model_copy(update={"cuda": [rng.torch[:24]]})  # as written on a one-GPU machine
    ckptstore.Store(tmp_path).save({"model": model.state_dict()}, step=5, rng=from_gpu)
    torch.manual_seed(1234)
    ck = Checkpointer(tmp_path, signals=())
    with pytest.warns(UserWarning, match=r"without cuda \(1 device states saved, 0 devices here\)"):
        assert ck.resume(model=model) == 5
    assert ck.resumed is not None and ck.resumed.rng_skipped == ("cuda (1 device states saved, 0 devices here)",)
    assert torch.equal(
        torch.get_rng_state(), torch.frombuffer(bytearray(__import__("base64").b64decode(rng.torch)), dtype=torch.uint8)
    )  # the CPU state was applied


def test_a_new_best_saves_only_when_asked(tmp_path: Path) -> None:
    """keep_best is a retention rule; saving on every new best of a per-step metric is opt-in."""
    model, _, _ = _setup()
    ck = Checkpointer(tmp_path / "a", every_steps=50, keep_best=("loss", "min", 1000), save_on_close=False, signals=())
    for i in range(200):
        ck.step(i, model=model, metrics={"loss": 1.0 / (i + 1)})  # a new best at every step
    ck.close()
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path / "a")] == [50, 100, 150, 200]  # every_steps only
    ck = Checkpointer(
        tmp_path / "b", every_steps=50, keep_best=("loss", "min", 200), save_best=True, save_on_close=False, signals=()
    )
    for i in range(20):
        ck.step(i, model=model, metrics={"loss": 1.0 / (i + 1)})
    ck.close()
    assert len(ckptstore.list_checkpoints(tmp_path / "b")) == 20  # opted in: every improvement saved


def test_keep_best_on_a_metric_never_given_warns_once(tmp_path: Path) -> None:
    model, _, _ = _setup()
    ck = Checkpointer(tmp_path, every_steps=2, keep_best=("val_loss", "min"), signals=())
    with pytest.warns(ckptstore.CkptstoreWarning, match="'val_loss'.*never") as caught:
        for i in range(4):
            ck.step(i, model=model, metrics={"loss": 0.5})
        ck.epoch_end(0, metrics={"loss": 0.5})
        ck.close()
    assert len([w for w in caught if "never" in str(w.message)]) == 1
    ck = Checkpointer(tmp_path / "ok", every_steps=2, keep_best=("val_loss", "min"), signals=())
    with warnings.catch_warnings():
        warnings.simplefilter("error", ckptstore.CkptstoreWarning)
        for i in range(4):
            ck.step(i, model=model, metrics={"loss": 0.5})
        ck.epoch_end(0, metrics={"val_loss": 0.4})
        ck.close()


def test_a_one_based_step_past_total_steps_warns(tmp_path: Path) -> None:
    model, _, _ = _setup()
    ck = Checkpointer(tmp_path, every_steps=50, total_steps=100, signals=())
    with pytest.warns(ckptstore.CkptstoreWarning, match="0-based") as caught:
        for step in range(1, 101):  # 1-based: the last call means checkpoint 101 of 100
            ck.step(step, model=model)
        ck.close()
    assert len([w for w in caught if "0-based" in str(w.message)]) == 1


def test_a_save_with_nothing_tracked_is_an_error_not_silence(tmp_path: Path) -> None:
    """step() whose trigger fires before any model/optimizer was passed says so (it used to
    return False and write nothing, every time); epoch_end() and save() already did."""
    ckpt = Checkpointer(tmp_path / "run", every_steps=2)
    assert ckpt.step(0) is False  # no trigger yet: nothing to complain about
    with pytest.raises(RuntimeError, match="nothing to save: pass model="):
        ckpt.step(1)
    model, opt, _ = _setup()
    assert ckpt.step(3, model=model, optimizer=opt) is True
    ckpt.close()
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path / "run")] == [4]
