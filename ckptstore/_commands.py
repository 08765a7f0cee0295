"""The maintenance commands of the command line: ``show``, ``gc``, ``du`` (``verify``: _fsck.py).

Each takes the parsed arguments and returns an exit code (0 ok, 1 problems found); ``_cli``
owns parsing. Output is plain text for people, or JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from typing import Any

import numpy as np

from ._errors import UnsupportedFormatError
from ._info import CheckpointInfo
from ._layout import OBJECTS_DIR, parse_object_key
from ._manifest import Manifest
from ._retention import Retention, format_duration, parse_duration
from ._space import fmt_bytes
from ._store import Store


def _open(args: argparse.Namespace) -> Store:
    from ._cli import _storage_options

    return Store(args.uri, storage_options=_storage_options(args))


def _table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())


def _when(i: CheckpointInfo) -> str:
    return i.created_at.strftime("%Y-%m-%d %H:%M:%S")


def _pick(store: Store, args: argparse.Namespace) -> CheckpointInfo:
    return store.info(getattr(args, "step", None), id=getattr(args, "id", None))


def progress_text(meta: Any, step: int) -> str:
    """``"1500/10000 (15.0%)"`` when the checkpoint's meta has ``total_steps``, else ``""``."""
    total = meta.get("total_steps") if isinstance(meta, dict) else None
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        return ""
    return f"{step}/{total} ({100.0 * step / total:.1f}%)"


# -- show -------------------------------------------------------------------------------------
def _tensor_ids(node: Any, out: set[int]) -> None:
    if isinstance(node, dict):
        if len(node) == 1 and "$tensor" in node and type(node["$tensor"]) is int:
            out.add(node["$tensor"])
            return
        for v in node.values():
            _tensor_ids(v, out)
    elif isinstance(node, list):
        for v in node:
            _tensor_ids(v, out)


def _groups(tree: Any) -> list[tuple[str, set[int]]]:
    """Tensor indices per top-level key of the state."""
    node = tree
    if isinstance(node, dict) and set(node) == {"$odict"}:
        node = node["$odict"]
    pairs: list[tuple[str, Any]]
    if isinstance(node, dict) and not any(k.startswith("$") for k in node):
        pairs = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, dict) and set(node) == {"$dict"} and isinstance(node["$dict"], list):
        pairs = [(json.dumps(p[0]) if not isinstance(p[0], str) else p[0], p[1])
                 for p in node["$dict"] if isinstance(p, list) and len(p) == 2]
    else:
        pairs = [("state", node)]
    out = []
    for name, v in pairs:
        ids: set[int] = set()
        _tensor_ids(v, ids)
        out.append((name, ids))
    return out


def _itemsize(kind: str, dtype: str) -> int:
    if kind == "numpy":
        try:
            return int(np.dtype(dtype).itemsize)
        except TypeError:
            return 0
    from ._tensors import dtype_from_name

    try:
        return int(dtype_from_name(dtype).itemsize)
    except UnsupportedFormatError:
        return 0


def _tensor_bytes(m: Manifest, j: int) -> int:
    e = m.tensors[j]
    n = 1
    for d in e.shape:
        n *= d
    return n * _itemsize(e.kind, e.dtype)


def show_summary(store: Store, info: CheckpointInfo) -> dict[str, Any]:
    m = store._manifest(info.key)
    rng = []
    if m.rng is not None:
        for k in ("python", "numpy", "torch", "mps"):
            if getattr(m.rng, k) is not None:
                rng.append(k)
        if m.rng.cuda:
            rng.append(f"cuda x{len(m.rng.cuda)}")
    dtypes: dict[str, list[int]] = {}
    for j, e in enumerate(m.tensors):
        d = dtypes.setdefault(e.dtype, [0, 0])
        d[0] += 1
        d[1] += _tensor_bytes(m, j)
    codecs: dict[str, int] = {}
    for oi in m.objects.values():
        codecs[oi.codec] = codecs.get(oi.codec, 0) + 1
    groups = [{"key": name, "tensors": len(ids), "bytes": sum(_tensor_bytes(m, j) for j in ids)}
              for name, ids in _groups(m.tree) if ids]
    return {
        "id": info.id, "step": info.step, "epoch": info.epoch, "created_at": info.created_at.isoformat(),
        "producer": dict(m.producer), "parent": m.parent, "tags": list(m.tags), "metrics": dict(m.metrics),
        "progress": progress_text(info.meta, info.step) or None, "meta": dict(info.meta),
        "config": info.config, "rng": rng,
        "tensors": {"count": len(m.tensors), "logical_bytes": m.stats.logical_bytes,
                    "dtypes": {k: {"count": v[0], "bytes": v[1]} for k, v in sorted(dtypes.items())},
                    "groups": groups},
        "storage": {"objects": len(m.objects), "stored_bytes": m.stats.stored_bytes, "new_bytes": m.stats.new_bytes,
                    "new_objects": m.stats.new_objects, "codecs": codecs},
    }


def cmd_show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        s = show_summary(store, _pick(store, args))
    if args.json:
        print(json.dumps(s, indent=2, default=repr))
        return 0
    epoch = "" if s["epoch"] is None else f", epoch {s['epoch']}"
    print(f"checkpoint {s['id'][:12]}  (step {s['step']}{epoch})")
    rows = [("id", s["id"]), ("created", s["created_at"]),
            ("producer", ", ".join(f"{k} {v}" for k, v in s["producer"].items())),
            ("parent", s["parent"] or "-"), ("tags", ", ".join(s["tags"]) or "-"),
            ("metrics", "  ".join(f"{k}={v:.6g}" for k, v in s["metrics"].items()) or "-")]
    if s["progress"]:
        rows.append(("progress", s["progress"]))
    rows.append(("rng", ", ".join(s["rng"]) or "not captured"))
    if s["meta"]:
        rows.append(("meta", json.dumps(s["meta"], default=repr)))
    t = s["tensors"]
    dt = ", ".join(f"{k} x{v['count']} ({fmt_bytes(v['bytes'])})" for k, v in t["dtypes"].items())
    rows.append(("tensors", f"{t['count']} tensors, {fmt_bytes(t['logical_bytes'])}" + (f": {dt}" if dt else "")))
    st = s["storage"]
    codecs = ", ".join(f"{k} x{v}" for k, v in sorted(st["codecs"].items()))
    rows.append(("storage", f"{st['objects']} objects, {fmt_bytes(st['stored_bytes'])} stored ({codecs}); "
                            f"this save wrote {fmt_bytes(st['new_bytes'])} in {st['new_objects']} objects"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(w)}  {v}")
    if t["groups"]:
        print("state:")
        gw = max(len(g["key"]) for g in t["groups"])
        for g in t["groups"]:
            print(f"  {g['key'].ljust(gw)}  {g['tensors']:>6} tensors  {fmt_bytes(g['bytes']):>10}")
    print("config:")
    cfg = json.dumps(s["config"], indent=2, default=repr, sort_keys=False)
    print("\n".join("  " + ln for ln in cfg.splitlines()))
    return 0


# -- gc ---------------------------------------------------------------------------------------
def parse_keep_best(text: str) -> tuple[str, str, int]:
    """``METRIC:min|max[:K]`` -> (metric, mode, K); argparse turns ValueError into exit code 2."""
    parts = text.rsplit(":", 2) if text.count(":") >= 2 else text.rsplit(":", 1)
    if len(parts) == 3 and parts[1] in ("min", "max"):
        metric, mode, k = parts
    elif len(parts) == 2 and parts[1] in ("min", "max"):
        (metric, mode), k = parts, "1"
    else:
        raise argparse.ArgumentTypeError(f"expected METRIC:min|max[:K], e.g. val_loss:min or acc:max:3, not {text!r}")
    if not metric or not k.isdigit() or int(k) < 1:
        raise argparse.ArgumentTypeError(f"expected METRIC:min|max[:K] with K >= 1, not {text!r}")
    return metric, mode, int(k)


def duration_arg(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def policy_from_args(args: argparse.Namespace) -> Retention | None:
    given = [args.keep_last, args.keep_best, args.keep_every, args.keep_within]
    if all(v is None for v in given) and not args.keep_tag:
        return None
    tags = tuple(dict.fromkeys(["pinned", *(args.keep_tag or [])]))
    return Retention(keep_last=args.keep_last, keep_best=args.keep_best, keep_every=args.keep_every,
                     keep_within=args.keep_within, keep_tags=tags)


def cmd_gc(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    grace = None if args.grace is None else args.grace.total_seconds()
    with _open(args) as store:
        store._read_config()
        source = "command line"
        if policy is None:
            policy = store.get_retention()
            source = "stored in the store"
        elif args.set_policy and not args.dry_run:
            store.set_retention(policy)
            source = "command line, now stored in the store"
        report = store.gc(policy, dry_run=args.dry_run, grace=grace, wait=args.wait) if policy is not None \
            else store.prune(dry_run=args.dry_run, grace=grace, wait=args.wait)
    if args.json:
        print(json.dumps({
            "dry_run": report.dry_run, "policy": None if policy is None else policy.to_json(),
            "decisions": [] if report.plan is None else [
                {"id": d.checkpoint.id, "step": d.checkpoint.step, "action": d.action, "reasons": list(d.reasons)}
                for d in report.plan.decisions],
            "removed": [i.id for i in report.removed], "deleted_objects": report.deleted_objects,
            "freed_bytes": report.freed_bytes, "deleted_temp": report.deleted_temp,
            "young_objects": report.young_objects, "young_bytes": report.young_bytes,
            "deferred": report.deferred, "problems": report.problems}, indent=2))
        return 0 if report.ok else 1
    if policy is None:
        print("no retention policy given or stored: no checkpoint is removed; pruning unreferenced data only")
    else:
        print(f"policy ({source}): {policy.describe()}")
    if report.plan is not None and report.plan.decisions:
        rows = [[d.action, str(d.checkpoint.step), _when(d.checkpoint), d.checkpoint.short_id,
                 "; ".join(d.reasons)] for d in reversed(report.plan.decisions)]
        _table(["action", "step", "created (UTC)", "id", "reasons"], rows)
    verb = "would free" if report.dry_run else "freed"
    rm = "would remove" if report.dry_run else "removed"
    print(f"{'dry run: ' if report.dry_run else ''}{rm} {len(report.removed)} checkpoint(s); {verb} "
          f"{fmt_bytes(report.freed_bytes)} ({report.freed_bytes} bytes) in {report.deleted_objects} object(s)")
    if report.deleted_temp:
        print(f"{'would delete' if report.dry_run else 'deleted'} {report.deleted_temp} stale temporary file(s)")
    if report.young_objects:
        g = format_duration(timedelta(seconds=grace if grace is not None else _default_grace()))
        print(f"kept {report.young_objects} unreferenced object(s) ({fmt_bytes(report.young_bytes)}) younger than "
              f"the grace period ({g}): a save may still be writing them")
    if report.deferred:
        print(f"note: {report.deferred}", file=sys.stderr)
    for p in report.problems:
        print(f"problem: {p}", file=sys.stderr)
    return 0 if report.ok else 1


def _default_grace() -> float:
    from ._gc import GRACE

    return GRACE


# -- du ---------------------------------------------------------------------------------------
def cmd_du(args: argparse.Namespace) -> int:
    from ._gc import _mark

    with _open(args) as store:
        infos = store.list()
        referenced, problems, manifests = _mark(store)
        users: dict[str, int] = {}
        size: dict[str, int] = {}
        for m in manifests.values():
            for k, oi in m.objects.items():
                users[k] = users.get(k, 0) + 1
                size[k] = oi.size
        rows = []
        for i in infos:
            m = manifests.get(i.key)
            if m is None:
                continue
            unique = sum(oi.size for k, oi in m.objects.items() if users.get(k) == 1)
            rows.append({"step": i.step, "id": i.id, "created_at": i.created_at.isoformat(), "logical": i.size,
                         "stored": i.stored_bytes, "unique": unique, "new": i.new_bytes})
        garbage = garbage_bytes = 0
        on_storage = 0
        for key in store.backend.list(OBJECTS_DIR):
            d = parse_object_key(key)
            if d is None:
                continue
            if d in referenced:
                on_storage += size[d]
            else:
                garbage += 1
                try:
                    garbage_bytes += store.backend.size(key)
                except OSError:
                    pass
    logical = sum(r["logical"] for r in rows)
    stored = on_storage
    out = {"checkpoints": rows, "logical_bytes": logical, "stored_bytes": stored,
           "referenced_objects": len(referenced), "unreferenced_objects": garbage,
           "unreferenced_bytes": garbage_bytes, "problems": problems}
    if args.json:
        print(json.dumps(out, indent=2))
        return 1 if problems else 0
    f = fmt_bytes
    _table(["step", "created (UTC)", "logical", "referenced", "only here", "written", "id"],
           [[str(r["step"]), r["created_at"][:19].replace("T", " "), f(r["logical"]), f(r["stored"]), f(r["unique"]),
             f(r["new"]), r["id"][:12]] for r in rows])
    ratio = f"{logical / stored:.2f}x" if stored else "-"
    print(f"total: {f(logical)} of tensors in {len(rows)} checkpoint(s) stored in {f(stored)} "
          f"({len(referenced)} objects); dedup and compression: {ratio}")
    if garbage:
        print(f"unreferenced: {f(garbage_bytes)} in {garbage} object(s) (`ckptstore gc` removes them once "
              "they are older than the grace period)")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0

