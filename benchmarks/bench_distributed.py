"""Distributed checkpoints: ckptstore's DCP backend against DCP's own writers, same FSDP2 state.

Starts ``--worlds`` (default 2 and 4) gloo process groups on 127.0.0.1, one process per rank,
each holding the same FSDP2 (``fully_shard``) model + AdamW state of ``--mb`` MiB in total, and
times, medians of ``--repeats`` (every rank between two barriers, so the slowest rank counts):

- ``ckptstore``: ``dcp.save`` / ``dcp.load`` with ``CkptstoreWriter`` / ``CkptstoreReader`` into a
  local store (a fresh store per repeat, so nothing is deduplicated; every read verified);
- ``dcp fs tN``: DCP's ``FileSystemWriter`` / ``FileSystemReader`` with ``thread_count`` N in
  ``--threads`` (the table marks the best);
- with ``--s3``: both on a moto server on 127.0.0.1 (``CkptstoreWriter`` on ``s3://`` and DCP's
  ``FsspecWriter`` / ``FsspecReader``).

Also: bytes written (for a DDP state, replicated on every rank, too: it should be ~1x the model),
and peak resident memory above the start, the largest over the ranks. Both writers fsync
(``FileSystemWriter(sync_files=True)``, its default). Loads run right after the save (warm page
cache for both). Writes JSON to ``benchmarks/results/distributed.json`` and prints tables.

    python benchmarks/bench_distributed.py --mb 256 --repeats 3 --s3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import torch  # noqa: E402
from _measure import CacheDropper  # noqa: E402

HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _model(mb: int, width: int) -> torch.nn.Module:
    params = mb * (1 << 20) // 12  # fp32 weights + two Adam moments
    layers = max(1, params // (width * width + width))
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def _trained(model: torch.nn.Module) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def _worker(rank: int, world: int, port: int, cfg: dict[str, Any], out: str) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from _measure import PeakRss
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from ckptstore import Retention, Store
    from ckptstore.adapters.dcp import CkptstoreLoadPlanner, CkptstoreReader, CkptstoreSavePlanner, CkptstoreWriter

    os.environ.update(MASTER_ADDR=HOST, MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    device = cfg.get("device", "cpu")
    if device == "cuda":  # NCCL for the model, gloo for DCP's CPU-side collectives
        torch.cuda.set_device(rank % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=600))
    mesh = init_device_mesh(device, (world,))
    model = _model(cfg["mb"], cfg["width"]).to(device)
    for layer in model:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = _trained(model)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    state_bytes = sum(
        t.to_local().nbytes if hasattr(t, "to_local") else t.nbytes for sd in (msd, osd["state"]) for t in _tensors(sd)
    )
    total_bytes = [0]
    dist.all_reduce(t := torch.tensor([state_bytes], dtype=torch.int64))
    total_bytes[0] = int(t.item())
    root = cfg["root"]
    s3 = cfg.get("s3")
    rows: list[dict[str, Any]] = []

    def timed(fn: Callable[[], Any]) -> tuple[float, int]:
        peak = PeakRss()
        gc.collect()  # before the clock starts: a full collection of this heap takes longer than a warm load
        dist.barrier()

        def span() -> float:
            t0 = time.perf_counter()
            fn()
            dist.barrier()
            return time.perf_counter() - t0

        dt, rss = peak.run(span, collect=False)
        rss_all: list[Any] = [None] * world
        dist.all_gather_object(rss_all, rss)
        return dt, max(rss_all)

    methods: list[tuple[str, Callable[[str], Any], Callable[[str], Any], Callable[[str], int]]] = []

    same_store = bool(cfg.get("same_store"))
    save_step = [1]

    def opts(path: str) -> dict[str, Any]:
        """ckptstore's keyword arguments for ``path`` (moto's endpoint for an s3:// one)."""
        return {"storage_options": s3["options"]} if path.startswith("s3://") else {}

    def ck_save(path: str) -> Any:
        writer = CkptstoreWriter(path, step=save_step[0], **opts(path))
        dcp.save(state, storage_writer=writer, planner=CkptstoreSavePlanner())

    def ck_load(path: str, verify: bool = True) -> Any:
        reader = CkptstoreReader(path, verify=verify, **opts(path))
        dcp.load(state, storage_reader=reader, planner=CkptstoreLoadPlanner())

    methods.append(("ckptstore", ck_save, ck_load, _du))
    for n in cfg["threads"]:

        def fs_save(path: str, n: int = n) -> Any:
            dcp.save(state, storage_writer=dcp.FileSystemWriter(path, thread_count=n))

        def fs_load(path: str) -> Any:
            dcp.load(state, storage_reader=dcp.FileSystemReader(path))

        methods.append((f"dcp fs t{n}", fs_save, fs_load, _du))
    if s3:
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

        def s3_size(path: str) -> int:
            import s3fs

            fs = s3fs.S3FileSystem(use_listings_cache=False, **s3["options"])
            return sum(fs.du(path.removeprefix("s3://"), total=False).values())

        def fx_save(path: str) -> Any:
            dcp.save(state, storage_writer=FsspecWriter(path, **s3["options"]))

        def fx_load(path: str) -> Any:
            dcp.load(state, storage_reader=FsspecReader(path, **s3["options"]))

        methods.append(("ckptstore s3", ck_save, ck_load, s3_size))
        methods.append(("dcp fsspec s3", fx_save, fx_load, s3_size))

    dropper = CacheDropper()
    for rep in range(cfg["repeats"]):
        order = methods[rep % len(methods) :] + methods[: rep % len(methods)]
        save_step[0] = rep + 1
        if same_store:  # the next training step: every byte changes (nothing deduplicated)
            with torch.no_grad():
                for sd in (msd, osd["state"]):
                    for t in _tensors(sd):
                        (t.to_local() if hasattr(t, "to_local") else t).add_(1e-3)
        for name, save, load, size in order:
            leaf = f"w{world}-{name.replace(' ', '_')}-{rep}"  # a fresh location per world, method, repeat
            if same_store and name.startswith("ckptstore"):
                leaf = f"w{world}-{name.replace(' ', '_')}"  # one store, a new step per repeat
            base = f"{s3['prefix']}/{leaf}" if name.endswith("s3") else os.path.join(root, leaf)
            save_s, save_rss = timed(lambda: save(base))
            if rank == 0 and not base.startswith("s3://"):
                dropper.drop(base)  # loads start cold for every method, as a resume after a crash does
            dist.barrier()
            load_s, load_rss = timed(lambda: load(base))
            warm_s, _ = timed(lambda: load(base))  # again, with the files in the page cache
            # the same guarantee as DCP's reader (none): ckptstore warm with hash checks off
            unverified_s = timed(lambda: ck_load(base, verify=False))[0] if name.startswith("ckptstore") else None
            nbytes = size(base) if rank == 0 else 0
            if same_store and name.startswith("ckptstore") and rank == 0:  # this step's, not the store's
                nbytes = Store(base, **opts(base)).info().new_bytes
            rows.append(
                {
                    "method": name,
                    "repeat": rep,
                    "save_s": save_s,
                    "load_s": load_s,
                    "warm_load_s": warm_s,
                    "warm_unverified_s": unverified_s,
                    "bytes": nbytes,
                    "save_rss": save_rss,
                    "load_rss": load_rss,
                }
            )
            dist.barrier()
            if same_store and name.startswith("ckptstore"):
                if rank == 0:  # outside the timed spans: keep only this step, as keep_last=1 would
                    Store(base, **opts(base)).gc(Retention(keep_last=1), grace=0)
            elif rank == 0 and not base.startswith("s3://"):
                shutil.rmtree(base, ignore_errors=True)
    ddp = _ddp_bytes(rank, world, cfg, dcp, CkptstoreWriter, CkptstoreSavePlanner)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"world": world, "state_bytes": total_bytes[0], "rows": rows, "ddp": ddp}, f)
    dist.barrier()
    dist.destroy_process_group()


def _tensors(sd: Any) -> list[torch.Tensor]:
    if isinstance(sd, torch.Tensor):
        return [sd] if sd.dim() > 0 else []
    if isinstance(sd, dict):
        return [t for v in sd.values() for t in _tensors(v)]
    return []


def _ddp_bytes(rank: int, world: int, cfg: dict[str, Any], dcp: Any, writer: Any, planner: Any) -> dict[str, Any]:
    """A DDP state (the same tensors on every rank): bytes written by each writer."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(_model(max(4, cfg["mb"] // 4), cfg["width"]).to(cfg.get("device", "cpu")))
    opt = _trained(model)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    model_bytes = sum(t.nbytes for t in _tensors(msd)) + sum(t.nbytes for t in _tensors(osd["state"]))
    ck, fs = os.path.join(cfg["root"], f"w{world}-ddp-ckptstore"), os.path.join(cfg["root"], f"w{world}-ddp-fs")
    dcp.save(state, storage_writer=writer(ck, step=1), planner=planner())
    dcp.save(state, storage_writer=dcp.FileSystemWriter(fs))
    dist.barrier()
    return {"state_bytes": model_bytes, "ckptstore": _du(ck), "dcp_fs": _du(fs)}


def run_world(world: int, cfg: dict[str, Any]) -> dict[str, Any]:
    import torch.multiprocessing as mp

    out = os.path.join(cfg["root"], f"world{world}.json")
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, cfg, out)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode != 0 for p in procs):
        raise SystemExit(f"world {world}: a rank failed ({[p.exitcode for p in procs]})")
    with open(out) as f:
        return json.load(f)


def _median_or_none(xs: list[Any]) -> float | None:
    got = [x for x in xs if x is not None]
    return statistics.median(got) if got else None


def compare(res: dict[str, Any], ours: str = "ckptstore") -> dict[str, float] | None:
    """ckptstore against DCP's FileSystemWriter/Reader: saves against the best thread count's
    median; loads against the median of every FileSystemReader sample (the reader has no thread
    count, so its rows are one contender measured several times: pooling them avoids picking the
    luckiest row)."""
    rows = res["rows"]
    mine = [r for r in rows if r["method"] == ours]
    fs = [r for r in rows if r["method"].startswith("dcp fs")]
    if not mine or not fs:
        return None
    by: dict[str, list[float]] = {}
    for r in fs:
        by.setdefault(r["method"], []).append(r["save_s"])
    best_save = min(statistics.median(v) for v in by.values())
    med = statistics.median
    return {
        "save": med(r["save_s"] for r in mine) / best_save,
        "cold_load": med(r["load_s"] for r in mine) / med(r["load_s"] for r in fs),
        "warm_load": med(r["warm_load_s"] for r in mine) / med(r["warm_load_s"] for r in fs),
        "warm_load_unverified": med(r["warm_unverified_s"] for r in mine) / med(r["warm_load_s"] for r in fs),
    }


def summarize(res: dict[str, Any]) -> list[dict[str, Any]]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in res["rows"]:
        by.setdefault(r["method"], []).append(r)
    out = []
    for name, rs in by.items():
        out.append(
            {
                "method": name,
                "save_s": statistics.median(r["save_s"] for r in rs),
                "load_s": statistics.median(r["load_s"] for r in rs),
                "warm_load_s": statistics.median(r["warm_load_s"] for r in rs),
                "warm_unverified_s": _median_or_none([r.get("warm_unverified_s") for r in rs]),
                "spread": {
                    k: [min(r[k] for r in rs), max(r[k] for r in rs)] for k in ("save_s", "load_s", "warm_load_s")
                },
                "bytes": max(r["bytes"] for r in rs),
                "save_rss": max(r["save_rss"] for r in rs),
                "load_rss": max(r["load_rss"] for r in rs),
            }
        )
    fs = [o for o in out if o["method"].startswith("dcp fs")]
    if fs:
        best = min(fs, key=lambda o: o["save_s"])
        best["method"] += " (best)"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=64, help="model + Adam state in MiB, over all ranks")
    ap.add_argument("--width", type=int, default=512, help="Linear layer width")
    ap.add_argument("--worlds", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="FileSystemWriter thread counts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s3", action="store_true", help="also on a moto S3 server on 127.0.0.1")
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the model lives; cuda: one GPU per rank, NCCL (not yet run: no GPU was lent)",
    )
    ap.add_argument(
        "--same-store",
        action="store_true",
        help="ckptstore saves every repeat into one store as the next step (the state changes between "
        "repeats, so nothing deduplicates), as a training run does; DCP gets a fresh folder per save, as "
        "with a checkpoint_id per step",
    )
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "distributed.json"))
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ckptstore-bench-dist-", dir=args.dir)
    cfg: dict[str, Any] = {
        "mb": args.mb,
        "width": args.width,
        "repeats": args.repeats,
        "threads": args.threads,
        "root": root,
        "device": args.device,
        "same_store": args.same_store,
    }
    server = None
    try:
        if args.s3:
            import cloudservers as cs

            server = cs.start_moto()
            t = cs.new_s3_bucket(server.url)
            cfg["s3"] = {"prefix": t.uri, "options": t.options}
        results = {}
        for w in args.worlds:
            res = run_world(w, cfg)
            results[w] = {"summary": summarize(res), "vs_filesystem": compare(res), **res}
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    doc = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        },
        "args": vars(args),
        "results": results,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
    for w, r in results.items():
        print(f"\n### {w} ranks: {r['state_bytes'] / (1 << 20):.1f} MiB FSDP2 state, medians of {args.repeats}\n")
        print(
            "| method | save s | cold load s | warm load s | warm, verify=False s | bytes written | peak RSS save "
            "| peak RSS load |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")

        def cell(o: dict[str, Any], k: str) -> str:
            lo, hi = o["spread"][k]
            return f"{o[k]:.3f} ({lo:.2f}-{hi:.2f})"

        for o in r["summary"]:
            unv = "-" if o.get("warm_unverified_s") is None else f"{o['warm_unverified_s']:.3f}"
            print(
                f"| {o['method']} | {cell(o, 'save_s')} | {cell(o, 'load_s')} | {cell(o, 'warm_load_s')} | {unv} | "
                f"{o['bytes'] / (1 << 20):.1f} MiB | {o['save_rss'] / (1 << 20):.0f} MiB | "
                f"{o['load_rss'] / (1 << 20):.0f} MiB |"
            )
        c = r.get("vs_filesystem")
        if c:
            print(
                f"\nckptstore / FileSystemWriter: save {c['save']:.2f}x (best thread count), cold load "
                f"{c['cold_load']:.2f}x, warm load {c['warm_load']:.2f}x verified and "
                f"{c['warm_load_unverified']:.2f}x with verify=False (loads: every FileSystemReader sample pooled)"
            )
        d = r["ddp"]
        print(
            f"\nDDP state {d['state_bytes'] / (1 << 20):.1f} MiB on {w} ranks: ckptstore wrote "
            f"{d['ckptstore'] / d['state_bytes']:.3f}x, DCP FileSystemWriter {d['dcp_fs'] / d['state_bytes']:.3f}x"
        )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
