"""torch.distributed.checkpoint on ckptstore (adapters/dcp.py) with real gloo processes on 127.0.0.1.

The multi-process jobs (tests/_dcp_job.py) run once per module and the tests check their records
and the store they left: resharding N -> M for N, M in {1, 2, 4} (FSDP2 / DTensor through
get_state_dict / set_state_dict), DDP bytes written once, dedup of unchanged shards, a failing
rank, async_save. Faults (kill -9) and S3 (moto) are ``slow``.
"""

from __future__ import annotations

import json
import os
import pickle
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from torch.distributed.checkpoint.state_dict import get_state_dict

import ckptstore
from ckptstore import IntegrityError, ShardChunk, ShardedTensor, Store, UnsupportedFormatError
from ckptstore.adapters.dcp import (
    CkptstoreLoadPlanner,
    CkptstoreReader,
    CkptstoreSavePlanner,
    CkptstoreWriter,
    save_distributed,
)
from ckptstore.cli import main

from ._dcp_job import EXTRA, make_model, no_pickle, opt_step, reference, run_job, same

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # DCP warns when run without a process group


def one_process_state(steps: int = 1) -> dict[str, Any]:
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt_step(model, opt)
    msd, osd = get_state_dict(model, opt)
    return {"model": msd, "optim": osd, "extra": dict(EXTRA)}


def check_full(state: dict[str, Any], steps: int = 1) -> None:
    """``state`` (model + optimizer keyed by parameter name) equals the reference, exactly."""
    ref = reference(steps=steps)
    assert same(ref["model"], state["model"])
    assert same(ref["optim"], state["optim"]["state"])


def load_plain(uri: str, step: int, planner: Any = None) -> dict[str, Any]:
    """A DCP load into a plain (unsharded) model in this process: M = 1."""
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt_step(model, opt, 0.0)
    msd, osd = get_state_dict(model, opt)
    sd = {"model": msd, "optim": osd, "extra": {k: None for k in EXTRA}}
    with no_pickle():
        dcp.load(
            sd, storage_reader=CkptstoreReader(uri, step=step), planner=planner or CkptstoreLoadPlanner(), no_dist=True
        )
    return sd


# -- the multi-process jobs, once per module ---------------------------------------------------------
@pytest.fixture(scope="module")
def jobs(tmp_path_factory: Any) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("dcp")
    uri, ddp_uri = str(root / "fsdp"), str(root / "ddp")
    info1 = save_distributed(one_process_state(), uri, step=1)  # N = 1
    two = run_job(
        2,
        [
            ["fsdp_load", {"step": 1}],
            ["fsdp_save", {"step": 2}],
            ["fail", {"step": 3}],
            ["fsdp_save", {"step": 4, "touch": True}],
        ],
        str(root / "j2"),
        uri=uri,
    )
    four = run_job(
        4,
        [["fsdp_load", {"step": 2}], ["fsdp_load", {"step": 1}], ["fsdp_save", {"step": 5}]],
        str(root / "j4"),
        uri=uri,
    )
    back = run_job(2, [["fsdp_load", {"step": 5}], ["ddp", {"step": 1, "uri": ddp_uri}]], str(root / "j2b"), uri=uri)
    for name, recs in (("two", two), ("four", four), ("back", back)):
        for r, rec in enumerate(recs):
            assert rec["status"] == "ok" and rec["exitcode"] == 0, f"{name} rank {r}: {rec['status']}"
    return {"uri": uri, "ddp_uri": ddp_uri, "info1": info1, "two": two, "four": four, "back": back}


def test_reshard_1_to_2_to_4_and_back(jobs: dict[str, Any]) -> None:
    two, four, back = jobs["two"], jobs["four"], jobs["back"]
    assert two[0]["results"][0] == {"step": 1, "ok": True, "extra_ok": True}  # 1 -> 2
    assert four[0]["results"][0] == {"step": 2, "ok": True, "extra_ok": True}  # 2 -> 4
    assert four[0]["results"][1] == {"step": 1, "ok": True, "extra_ok": True}  # 1 -> 4
    assert back[0]["results"][0] == {"step": 5, "ok": True, "extra_ok": True}  # 4 -> 2
    for recs in (two, four, back):  # every rank loaded the values (no pickle: poisoned during every load)
        assert all(r["results"][0]["extra_ok"] for r in recs)
    for step in (5, 2):  # 4 -> 1, 2 -> 1
        sd = load_plain(jobs["uri"], step)
        check_full(sd)
        assert same(EXTRA, sd["extra"])


def test_show_tells_how_tensors_are_sharded(jobs: dict[str, Any], capsys: Any) -> None:
    assert main(["show", jobs["uri"], "--step", "5", "--json"]) == 0
    dist = json.loads(capsys.readouterr().out)["distributed"]
    assert dist["world_size"] == 4
    rows = {r["name"]: r for r in dist["sharded"]}
    assert rows["model.0.weight"]["split"] == "dim 0: 8+8+8+6" and rows["model.0.weight"]["shape"] == [30, 16]
    assert rows["model.2.bias"]["chunks"] >= 3  # 3 elements over 4 ranks: a rank holds none
    assert main(["show", jobs["uri"], "--step", "5"]) == 0
    assert "written by 4 processes" in capsys.readouterr().out


def test_one_process_load_gives_full_tensors(jobs: dict[str, Any]) -> None:
    store = Store(jobs["uri"])
    for step in (1, 2, 5):
        with no_pickle():
            state = ckptstore.load(jobs["uri"], step=step)
        check_full(state)
        assert same(EXTRA, state["extra"])
        m = store.manifest(step)
        assert m.version == 2 and m.distributed is not None
        assert m.distributed.world_size == {1: 1, 2: 2, 5: 4}[step]
        store.verify(step)
    four = store.manifest(5).distributed
    assert four is not None
    assert any(len(st.chunks) == 4 for st in four.sharded)  # sharded over 4 ranks, uneven (30 rows)


def test_export_writes_full_tensors(jobs: dict[str, Any], tmp_path: Any) -> None:
    dst = str(tmp_path / "out")
    assert main(["export", jobs["uri"], dst, "--step", "5"]) == 0
    exported = torch.load(os.path.join(dst, "checkpoint.pt"), weights_only=True)
    check_full(exported)


def test_every_rank_raises_and_nothing_commits_when_one_fails(jobs: dict[str, Any]) -> None:
    fail = [rec["results"][2] for rec in jobs["two"]]
    assert all(f["raised"] == "CheckpointException" for f in fail), fail
    assert all(3 not in f["steps"] for f in fail)
    assert [i.step for i in ckptstore.list_checkpoints(jobs["uri"])] == [1, 2, 4, 5]
    locks = os.path.join(jobs["uri"], "locks")
    assert not [n for n in os.listdir(locks) if n.startswith("save-")] if os.path.isdir(locks) else True


def test_unchanged_shards_are_not_written_again(jobs: dict[str, Any]) -> None:
    two = jobs["two"][0]["results"]
    full, touched = two[1], two[3]
    layer0 = 30 * 16 * 4
    # the first 2-rank save wrote its (resharded) chunks: all but the small values both ranks hold
    # (stored once) and never pack padding, which is not counted as new data
    assert 0.95 * full["size"] <= full["new_bytes"] <= full["size"], full
    assert touched["new_bytes"] <= layer0 + 1024, touched  # only the changed weight (two shards)


def test_ddp_replicated_state_is_written_once(jobs: dict[str, Any]) -> None:
    ddp = jobs["back"][0]["results"][1]
    assert ddp["first_new"] <= 1.05 * ddp["state_bytes"], ddp
    on_disk = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(os.path.join(jobs["ddp_uri"], "objects"))
        for f in fs
    )
    assert on_disk <= 1.05 * ddp["state_bytes"] + ddp["bias_bytes"] + 4096, (on_disk, ddp)
    assert ddp["second_new"] <= ddp["bias_bytes"] + 64, ddp  # one bias changed
    infos = ckptstore.list_checkpoints(jobs["ddp_uri"])
    assert [i.step for i in infos] == [1, 2, 3]  # the third by dcp.async_save (thread mode)
    assert infos[2].new_bytes == 0
    with no_pickle():
        state = ckptstore.load(jobs["ddp_uri"], step=3)
    assert state["model"]["2.bias"].shape == (64,)


# -- one process, no process group ---------------------------------------------------------------------
def test_plain_dcp_calls_never_pickle(tmp_path: Any) -> None:
    """dcp.save/dcp.load with DCP's default planners: values still go to JSON, nothing unpickles."""
    uri = str(tmp_path / "s")
    sd = one_process_state()
    dcp.save(sd, storage_writer=CkptstoreWriter(uri, step=1), planner=DefaultSavePlanner(), no_dist=True)
    raw = open(os.path.join(uri, Store(uri).info(1).key), "rb").read()
    assert b"$pickle" not in raw and b'"extra":{"step":7' in raw
    for d, _, files in os.walk(os.path.join(uri, "objects")):
        for f in files:  # no torch.save zip, no pickle stream in any object
            head = open(os.path.join(d, f), "rb").read(2)
            assert head not in (b"PK", b"\x80\x02", b"\x80\x04", b"\x80\x05")
    check_full(load_plain(uri, 1, planner=DefaultLoadPlanner()))  # torch.load never reached


def test_format_version_2_only_for_distributed(tmp_path: Any) -> None:
    uri = str(tmp_path / "s")
    save_distributed(one_process_state(), uri, step=1)
    ckptstore.save({"w": torch.ones(3)}, uri, step=2, rng=False)
    store = Store(uri)
    v2 = open(os.path.join(uri, store.info(1).key), "rb").read()
    v1 = open(os.path.join(uri, store.info(2).key), "rb").read()
    assert json.loads(v2)["version"] == 2 and "distributed" in json.loads(v2)
    assert json.loads(v1)["version"] == 1 and b"distributed" not in v1
    from ckptstore.format import _manifest

    with pytest.raises(UnsupportedFormatError, match="Upgrade ckptstore"):  # what a version-1 reader says
        _manifest._parse(v2, _manifest.Manifest, "m", "ckptstore.manifest", (1,))


def test_single_process_checkpoint_loads_through_dcp(tmp_path: Any) -> None:
    uri = str(tmp_path / "s")
    ckptstore.save(one_process_state(), uri, step=9, rng=False)  # an ordinary (version 1) checkpoint
    check_full(load_plain(uri, 9))


def test_commit_refuses_chunks_that_do_not_tile(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "s"))
    bad = [
        [ShardChunk(offsets=[0], sizes=[4], tensor=0), ShardChunk(offsets=[2], sizes=[4], tensor=1)],  # overlap
        [ShardChunk(offsets=[0], sizes=[4], tensor=0)],  # gap
        [ShardChunk(offsets=[0], sizes=[4], tensor=0), ShardChunk(offsets=[6], sizes=[4], tensor=1)],  # outside
    ]
    for chunks in bad:
        with store.session() as s:
            part = s.stage([torch.ones(4), torch.ones(4)])
            with pytest.raises(IntegrityError):
                s.commit(
                    part,
                    state={"w": ShardedTensor(dtype="float32", shape=[8], chunks=chunks)},
                    distributed=ckptstore.Distributed(world_size=2, names={"w": ["w"]}),
                    rng=False,
                )
    assert store.list() == []


def _simulated_ranks(uri: str, world: int = 2) -> tuple[list[CkptstoreWriter], list[Any], Any]:
    """DCP's save protocol driven by hand in one process (what dcp.save does on each rank)."""
    sd = one_process_state()
    writers = [CkptstoreWriter(uri, step=1) for _ in range(world)]
    planners = [CkptstoreSavePlanner() for _ in range(world)]
    local = []
    for r in range(world):
        planners[r].set_up_planner(sd, None, r == 0)
        writers[r].set_up_storage_writer(r == 0, rank=r, use_collectives=True)
        local.append(writers[r].prepare_local_plan(planners[r].create_local_plan()))
    plans, metadata = planners[0].create_global_plan(local)
    plans = writers[0].prepare_global_plan(plans)
    return writers, [planners[r].finish_plan(plans[r]) for r in range(world)], (planners, metadata)


def test_gc_never_collects_a_multi_rank_save_in_flight(tmp_path: Any) -> None:
    uri = str(tmp_path / "s")
    ckptstore.save({"old": torch.arange(1000.0)}, uri, step=0, rng=False)
    writers, plans, (planners, metadata) = _simulated_ranks(uri)
    results = [writers[1].write_data(plans[1], planners[1]).value()]  # rank 1 done
    leases = [n for n in os.listdir(os.path.join(uri, "locks")) if n.startswith("save-")]
    assert len(leases) == 1  # the coordinator's: it covers every rank
    store = Store(uri)
    report = store.gc(ckptstore.Retention(keep_last=1), grace=0, wait=0.0)  # the coordinator's lease is live
    assert report.deferred
    results.insert(0, writers[0].write_data(plans[0], planners[0]).value())
    writers[0].finish(metadata, results)
    assert writers[0].info is not None and writers[0].info.step == 1
    check_full(ckptstore.load(uri, step=1))
    store.verify(1)


def test_commands_work_on_a_distributed_checkpoint(tmp_path: Any, capsys: Any) -> None:
    uri, dst = str(tmp_path / "s"), str(tmp_path / "copy")
    writers, plans, (planners, metadata) = _simulated_ranks(uri)
    results = [writers[r].write_data(plans[r], planners[r]).value() for r in range(2)]
    writers[0].finish(metadata, results)
    for argv in (["ls", uri], ["show", uri], ["verify", uri], ["du", uri], ["cp", uri, dst], ["verify", dst]):
        code = main(argv)
        out = capsys.readouterr()
        assert code == 0, (argv, out)
        if argv[0] == "show":  # the plan gave each replicated tensor to one rank: none is sharded here
            assert "written by 2 processes" in out.out and "0 of " in out.out
    check_full(ckptstore.load(dst))
    assert Store(dst).info().id == writers[0].info.id  # same manifest bytes
    assert main(["gc", uri, "--grace", "0s"]) == 0
    Store(uri).verify()


def test_use_collectives_false_is_refused(tmp_path: Any) -> None:
    w = CkptstoreWriter(str(tmp_path / "s"))
    with pytest.raises(ValueError, match="use_collectives"):
        w.set_up_storage_writer(True, rank=0, use_collectives=False)


def test_writer_pickles_without_handles(tmp_path: Any) -> None:
    w = CkptstoreWriter(str(tmp_path / "s"), step=3, metrics={"loss": 1.0})
    w.set_up_storage_writer(True, rank=0, use_collectives=True)  # holds a store and a lease
    try:
        clone = pickle.loads(pickle.dumps(w))
        assert clone._store is None and clone._session is None and clone.step == 3
    finally:
        w.close()
    assert not [n for n in os.listdir(os.path.join(str(tmp_path / "s"), "locks")) if n.startswith("save-")]


def test_ranks_on_one_machine_split_its_cores(tmp_path: Any) -> None:
    from torch.distributed.checkpoint.planner import SavePlan

    w = CkptstoreWriter(str(tmp_path / "s"), step=1)
    local = w.prepare_local_plan(SavePlan(items=[]))
    assert isinstance(local.storage_data, dict) and local.storage_data["host"]
    plans = [SavePlan(items=[], storage_data={"host": h}) for h in ("a", "a", "b", "a")]
    assert [p.storage_data["peers"] for p in w.prepare_global_plan(plans)] == [3, 3, 1, 3]


@pytest.mark.parametrize("cores", [1, 3])
def test_stage_keeps_to_the_cores_it_is_given(tmp_path: Any, cores: int, monkeypatch: Any) -> None:
    from ckptstore.pipeline import _pools, _writer

    sizes: list[int] = []

    def recording(workers: int, name: str) -> Any:
        sizes.append(workers)
        return _pools.borrow(workers, name)

    monkeypatch.setattr(_writer, "borrow", recording)
    state = {f"w{i}": torch.randn(1 << 20) for i in range(6)}  # 24 MiB: the threaded writer
    with Store(str(tmp_path / "s"), workers=8) as store, store.session() as s:
        s.stage(state, cores=cores)
    # one thread per core, two where writes wait for the device (direct I/O); never fewer than 2
    assert sizes and sizes[-1] in {max(2, cores), max(2, 2 * cores)}


# -- faults, S3, async process mode (slow: a few more process groups) ---------------------------------
def _survived(uri: str, steps: list[int], **load_kw: Any) -> None:
    """Exactly ``steps`` are listed; each loads (full tensors, exact values) and verifies."""
    assert [i.step for i in ckptstore.list_checkpoints(uri, **load_kw)] == steps
    store = Store(uri, **load_kw)
    for step in steps:
        check_full(ckptstore.load(uri, step=step, **load_kw))
        store.verify(step)


@pytest.mark.slow
def test_kill_9_of_one_rank_mid_save(tmp_path: Any) -> None:
    uri = str(tmp_path / "store")
    save_distributed(one_process_state(), uri, step=1)
    trials = [(10, 1, "staged"), (20, 0, "finish"), (30, 1, "resolve")]
    for step, victim, at in trials:
        # the first save of each trial is also "the next save succeeds" after the previous kill
        recs = run_job(
            2,
            [["fsdp_save", {"step": step}], ["kill", {"step": step + 1, "rank": victim, "at": at}]],
            str(tmp_path / f"j{step}"),
            uri=uri,
        )
        assert recs[victim]["exitcode"] == -9, (at, recs[victim])
        survivor = recs[1 - victim]
        assert survivor["status"] == "ok", (at, survivor["status"])
        assert survivor["results"][1]["raised"] is not None, at  # the survivor raised, it did not hang
        _survived(uri, [1] + [s for s, _, _ in trials if s <= step])
    info = save_distributed(one_process_state(), uri, step=40)
    assert info.step == 40
    report = Store(uri).prune(grace=0)  # the killed saves' objects are unreferenced garbage
    assert report.deleted_objects > 0, report
    _survived(uri, [1, 10, 20, 30, 40])


@pytest.mark.slow
def test_on_s3_save_fail_load_and_kill(tmp_path: Any) -> None:
    from . import cloudservers as cs

    target = cs.new_s3_bucket(cs.shared("moto").url)
    kw = {"storage_options": target.options}
    save_distributed(one_process_state(), target.uri, step=1, **kw)
    recs = run_job(
        2,
        [
            ["fsdp_save", {"step": 2}],
            ["fail", {"step": 3}],
            ["fsdp_load", {"step": 1}],
            ["fsdp_load", {"step": 2}],
            ["kill", {"step": 4, "rank": 1, "at": "staged"}],
        ],
        str(tmp_path / "j"),
        uri=target.uri,
        options=target.options,
    )
    assert recs[1]["exitcode"] == -9
    res = recs[0]["results"]
    assert recs[0]["status"] == "ok", recs[0]["status"]
    assert res[1]["raised"] == "CheckpointException" and 3 not in res[1]["steps"]
    assert res[2] == {"step": 1, "ok": True, "extra_ok": True}
    assert res[3] == {"step": 2, "ok": True, "extra_ok": True}
    assert res[4]["raised"] is not None
    _survived(target.uri, [1, 2], **kw)
    save_distributed(one_process_state(), target.uri, step=5, **kw)
    _survived(target.uri, [1, 2, 5], **kw)


@pytest.mark.slow
def test_async_save_in_process_mode(tmp_path: Any) -> None:
    uri = str(tmp_path / "store")
    recs = run_job(2, [["async_process", {"step": 6}]], str(tmp_path / "j"), uri=uri, timeout=240)
    assert all(r["status"] == "ok" for r in recs), [r["status"] for r in recs]
    _survived(uri, [6])


@pytest.mark.slow
def test_checkpointer_under_a_process_group(tmp_path: Any) -> None:
    """Every rank calls step(): one commit per save, retention once, SIGTERM on one rank makes
    both save the same step and exit, resume agrees on one step past a damaged newest one."""
    uri = str(tmp_path / "store")
    first = run_job(
        2, [["loop", {"steps": 9, "every": 2, "kill_rank": 1, "kill_at": 4, "seed": 100}]], str(tmp_path / "a"), uri=uri
    )
    for rec in first:
        assert rec["status"] == "ok", rec["status"]
        assert rec["results"][0]["exit"] == 143 and rec["results"][0]["exit_step"] == 5, rec
    draws = [rec["results"][0]["draws"] for rec in first]
    assert draws[0]["4"] != draws[1]["4"]  # the ranks' random streams differ
    # each rank's RNG states are a tensor (an object of that rank's), not text in the manifest
    per_rank = ckptstore.load(uri, step=4)["_ckptstore_rng"]
    assert sorted(per_rank) == ["0", "1"] and all(t.dtype == torch.uint8 for t in per_rank.values())
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [4, 5]  # 2 removed by keep_last=2, once
    store = Store(uri)
    m4, m5 = store.manifest(4), store.manifest(5)
    assert m5.distributed is not None and m5.distributed.world_size == 2 and "signal:SIGTERM" in m5.meta["trigger"]
    victim = next(k for k in m5.objects if k not in m4.objects)
    os.remove(os.path.join(uri, "objects", victim[:2], victim))  # the newest checkpoint is damaged
    second = run_job(2, [["loop", {"steps": 8, "every": 2, "seed": 900}]], str(tmp_path / "b"), uri=uri)
    for rank, rec in enumerate(second):
        assert rec["status"] == "ok", rec["status"]
        r = rec["results"][0]
        assert (r["start"], r["skipped"], r["seen"]) == (4, [5], 4), r
        assert r["model_ok"] and r["optim_ok"], r
        # each rank continues its own random streams from step 4 (torch, random, NumPy)
        assert r["rng_skipped"] == [] and r["after_resume"] == draws[rank]["4"], (rank, r["after_resume"], draws)
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [6, 8]
    for step in (6, 8):
        store.verify(step)


@pytest.mark.parametrize(
    "fsdp,overlap", [(False, False), (True, False), (True, True)], ids=["ddp", "fsdp2", "fsdp2-overlap_copy"]
)
def test_checkpointer_async_save_under_a_process_group(tmp_path: Any, fsdp: bool, overlap: bool) -> None:
    """async_save=True under a process group saves in the background (no fallback): each rank
    stages its state (FSDP2: DTensor shards), training changes the weights right after step()
    returns, and every checkpoint holds exactly the weights of its step. With overlap_copy the
    DTensor parameters' copies wait for the optimizer step (it used to fail: a DTensor has no
    storage); the 5x3 and 1x5 weights shard unevenly (rank 1 holds no row of the 1x5)."""
    uri = str(tmp_path / "store")
    kw: dict[str, Any] = {"steps": 7, "every": 2, "fsdp": fsdp, "overlap": overlap}
    if overlap:
        kw["sizes"] = (3, 5, 1)
    recs = run_job(2, [["loop_async", kw]], str(tmp_path / "job"), uri=uri)
    for rec in recs:
        assert rec["status"] == "ok", rec["status"]
        r = rec["results"][0]
        assert r["staged"] and r["saved"] == [2, 4, 6], r
    exact = recs[0]["results"][0]["exact"]
    assert exact == {"2": True, "4": True, "6": True}, exact
    assert [i.step for i in ckptstore.list_checkpoints(uri)] == [2, 4, 6, 7]  # 7: the save at close
    for step in (2, 4, 6, 7):
        Store(uri).verify(step)


def test_checkpointer_ranks_keep_fresh_rng_when_one_process_wrote_the_checkpoint(tmp_path: Any) -> None:
    """RNG states from another number of processes are not restored: every rank resumes the
    weights and says (in rng_skipped) that its random streams start afresh."""
    from ckptstore.adapters.loop import Checkpointer

    uri = str(tmp_path / "store")

    class Wrapped(torch.nn.Module):  # the parameter names DDP gives the model under two ranks
        def __init__(self) -> None:
            super().__init__()
            self.module = make_model()

    model = Wrapped()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ckpt = Checkpointer(uri, every_steps=1)
    assert ckpt.resume(model=model, optimizer=opt) == 0
    for i in range(3):
        opt_step(model.module, opt)
        ckpt.step(i)
    ckpt.close()
    recs = run_job(2, [["loop", {"steps": 4, "every": 2, "seed": 900}]], str(tmp_path / "job"), uri=uri)
    for rec in recs:
        assert rec["status"] == "ok", rec["status"]
        r = rec["results"][0]
        assert r["start"] == 3 and r["model_ok"], r
        assert r["rng_skipped"] == ["every RNG"], r
    assert Store(uri).manifest(4).rng is not None  # the 2-rank save records the coordinator's


def test_ranks_that_resolved_different_checkpoints_refuse_to_load(tmp_path: Any) -> None:
    from torch.distributed.checkpoint.planner import LoadPlan

    uri = str(tmp_path / "s")
    save_distributed(one_process_state(), uri, step=1)
    save_distributed(one_process_state(2), uri, step=2)
    readers = [CkptstoreReader(uri, step=1), CkptstoreReader(uri)]  # as if a save committed in between
    plans = []
    for r in readers:
        r.set_up_storage_reader(r.read_metadata(), True)
        plans.append(r.prepare_local_plan(LoadPlan([])))
    with pytest.raises(ckptstore.CkptstoreError, match="different checkpoints"):
        readers[0].prepare_global_plan(plans)
    assert readers[0].prepare_global_plan(plans[:1]) == plans[:1]


def test_compression_and_cached_plans(tmp_path: Any) -> None:
    """zstd objects load exactly; DCP's plan caching (the second save reuses the first's plans)
    still commits each save's own data: hashes travel in the write results, not in the plans."""
    uri = str(tmp_path / "s")
    planner = CkptstoreSavePlanner(enable_plan_caching=True)
    first = one_process_state()
    dcp.save(first, storage_writer=CkptstoreWriter(uri, step=1, compression="zstd"), planner=planner, no_dist=True)
    second = one_process_state(steps=2)
    dcp.save(second, storage_writer=CkptstoreWriter(uri, step=2, compression="zstd"), planner=planner, no_dist=True)
    store = Store(uri)
    assert {o.codec for o in store.manifest(2).objects.values()} - {"none"}
    for step, steps in ((1, 1), (2, 2)):
        check_full(load_plain(uri, step), steps=steps)
        check_full(ckptstore.load(uri, step=step), steps=steps)


def test_async_save_with_a_reused_stager(tmp_path: Any) -> None:
    """dcp.async_save in thread mode with one DefaultStager kept across saves (its host buffers
    are reused): each save commits its own state."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    uri = str(tmp_path / "s")
    stager = DefaultStager(StagingOptions(False, False, False, False))
    try:
        for step in (1, 2):
            fut = dcp.async_save(
                one_process_state(steps=step),
                storage_writer=CkptstoreWriter(uri, step=step),
                planner=CkptstoreSavePlanner(),
                async_stager=stager,
                no_dist=True,
            )
            fut.result(timeout=60)
    finally:
        stager.close()
    for step in (1, 2):
        check_full(ckptstore.load(uri, step=step), steps=step)


def test_a_session_without_its_own_lease_stages_but_cannot_commit(tmp_path: Any) -> None:
    store = Store(str(tmp_path / "s"))
    with store.session(lease=False) as s:
        part = s.stage([torch.ones(3)])
        assert (
            not os.listdir(os.path.join(str(tmp_path / "s"), "locks"))
            if os.path.isdir(os.path.join(str(tmp_path / "s"), "locks"))
            else True
        )
        with pytest.raises(RuntimeError, match="lease=False"):
            s.commit(part, rng=False)
    assert store.list() == []


def test_diff_of_sharded_checkpoints(jobs: dict[str, Any]) -> None:
    """`ckptstore diff` matches sharded tensors chunk by chunk: step 4 changed one weight of step 2."""
    d = ckptstore.diff_checkpoints(jobs["uri"], 2, 4)
    status = {t.name: t.status for t in d.tensors}
    assert status["model.0.weight"] == "changed"
    assert {s for n, s in status.items() if n != "model.0.weight"} == {"identical"}
    changed = next(t for t in d.tensors if t.name == "model.0.weight")
    assert changed.relative_change is not None and changed.relative_change > 0


def test_a_background_save_that_fails_raises_on_every_rank_at_the_same_step(tmp_path: Any) -> None:
    """async_save under a process group: a save whose write fails on one rank (DCP fails it on
    all) raises at the same step() on every rank, however far each rank's background thread got;
    the ranks stay in step and the later saves are whole."""
    uri = str(tmp_path / "store")
    recs = run_job(
        2,
        [["loop_async_fail", {"steps": 6, "every": 2, "fail_rank": 1, "slow_rank": 0}]],
        str(tmp_path / "job"),
        uri=uri,
        timeout=90,
    )
    for rec in recs:
        assert rec["status"] == "ok", rec["status"]
    raised = [rec["results"][0]["raised"] for rec in recs]
    assert raised[0] == raised[1] and len(raised[0]) == 1, raised
    assert recs[0]["results"][0]["steps"] == [4, 6], recs
