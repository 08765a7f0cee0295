"""``ckptstore ls``, ``show`` and ``du``: what a store holds, read-only."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .._errors import CkptstoreError, UnsupportedFormatError
from .._lazy import lazy
from .._units import fmt_bytes
from ..format._layout import OBJECTS_DIR, parse_object_key
from ._common import add_store_arg, open_store, progress_text, table

if TYPE_CHECKING:
    import numpy as np

    from ..format._info import CheckpointInfo
    from ..format._manifest import Manifest
    from ..store._store import Store
else:
    np = lazy("numpy", globals(), "np")

SHOW_SHARDED = 20  # sharded tensors listed by `show` (all with --json)


def add_parsers(sub: Any) -> None:
    ls = sub.add_parser("ls", help="list checkpoints")
    add_store_arg(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=cmd_ls)

    show = sub.add_parser("show", help="one checkpoint in detail: config, metrics, RNG, tensors")
    add_store_arg(show)
    show.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    show.add_argument("--id", help="the checkpoint with this id (or unique prefix)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)

    du = sub.add_parser("du", help="space per checkpoint: logical size vs bytes actually stored")
    add_store_arg(du)
    du.add_argument("--json", action="store_true", help="print JSON")
    du.set_defaults(func=cmd_du)


# -- ls ---------------------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace) -> int:
    """The checkpoints; exit 1 when a manifest is damaged (each one warned about once)."""
    with open_store(args) as store:
        infos = store.list()
        newer = sorted((step, key) for key, step in store.catalog.newer().items())
        # damaged manifests make it exit 1; a newer format is listed as such (not damage)
        status = 1 if set(store.catalog.damaged()) - {key for _step, key in newer} else 0
    if args.json:
        rows = [
            {
                "id": i.id,
                "step": i.step,
                "epoch": i.epoch,
                "created_at": i.created_at.isoformat(),
                "size": i.size,
                "new_bytes": i.new_bytes,
                "metrics": dict(i.metrics),
                "tags": list(i.tags),
                "progress": progress_text(i.meta, i.step) or None,
            }
            for i in infos
        ]
        print(json.dumps(rows, indent=2))
        return status
    if not infos and not newer:
        print(f"no checkpoints in {args.uri}" + (" that can be read" if status else ""))
        return status
    head = ["step", "epoch", "created (UTC)", "size", "new", "metrics", "tags", "id"]
    body = [
        [
            str(i.step),
            "" if i.epoch is None else str(i.epoch),
            i.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            fmt_bytes(i.size),
            fmt_bytes(i.new_bytes),
            " ".join(f"{k}={v:.4g}" for k, v in i.metrics.items()),
            ",".join(i.tags),
            i.short_id,
        ]
        for i in infos
    ]
    progress = [progress_text(i.meta, i.step) for i in infos]
    for step, key in newer:  # written by a newer ckptstore: listed, not readable here
        at = sum(1 for i in infos if i.step <= step)
        body.insert(at, [str(step), "", "", "", "", "newer format, upgrade", "", key.rsplit("-", 1)[-1][:12]])
        progress.insert(at, "")
    if any(progress):
        head.insert(-1, "progress")
        for r, p in zip(body, progress):
            r.insert(-1, p)
    table(head, body)
    return status


# -- show -------------------------------------------------------------------------------------
def _tensor_ids(node: Any, out: set[int], m: Manifest | None = None) -> None:
    if isinstance(node, dict):
        if len(node) == 1 and "$tensor" in node and type(node["$tensor"]) is int:
            out.add(node["$tensor"])
            return
        if len(node) == 1 and "$sharded" in node and m is not None and m.distributed is not None:
            j = node["$sharded"]
            if type(j) is int and 0 <= j < len(m.distributed.sharded):
                out.update(c.tensor for c in m.distributed.sharded[j].chunks)
            return
        for v in node.values():
            _tensor_ids(v, out, m)
    elif isinstance(node, list):
        for v in node:
            _tensor_ids(v, out, m)


def _groups(tree: Any, m: Manifest | None = None) -> list[tuple[str, set[int]]]:
    """Tensor indices per top-level key of the state."""
    node = tree
    if isinstance(node, dict) and set(node) == {"$odict"}:
        node = node["$odict"]
    if isinstance(node, dict) and set(node) == {"$statedict"} and isinstance(node["$statedict"], list):
        node = node["$statedict"][0]  # a module's state_dict() (format version 3): its items
    pairs: list[tuple[str, Any]]
    if isinstance(node, dict) and not any(k.startswith("$") for k in node):
        pairs = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, dict) and set(node) == {"$dict"} and isinstance(node["$dict"], list):
        pairs = [
            (json.dumps(p[0]) if not isinstance(p[0], str) else p[0], p[1])
            for p in node["$dict"]
            if isinstance(p, list) and len(p) == 2
        ]
    else:
        pairs = [("state", node)]
    out = []
    for name, v in pairs:
        ids: set[int] = set()
        _tensor_ids(v, ids, m)
        out.append((name, ids))
    return out


def _split(st: Any) -> str:
    """How a sharded tensor is cut: the chunk sizes along each dimension the chunks split."""
    parts = []
    for d in range(len(st.shape)):
        cuts = sorted({(c.offsets[d], c.sizes[d]) for c in st.chunks})
        if len(cuts) > 1:
            sizes = [n for _, n in cuts]
            text = "+".join(map(str, sizes[:8])) + ("+..." if len(sizes) > 8 else "")
            parts.append(f"dim {d}: {text}")
    return ", ".join(parts) or "whole"


def _sharding(m: Manifest) -> dict[str, Any] | None:
    """World size and, per sharded tensor, its name, shape and how its chunks cut it."""
    d = m.distributed
    if d is None:
        return None
    index = {id(st): j for j, st in enumerate(d.sharded)}
    try:
        from ..format._tree import decode_tree

        state = decode_tree(m)
    except CkptstoreError:
        state = None
    rows = []
    for name, path in d.names.items():
        node = state
        try:
            for p in path:
                node = node[p]
        except (KeyError, IndexError, TypeError):
            continue
        j = index.get(id(node))
        if j is not None:
            st = d.sharded[j]
            rows.append(
                {
                    "name": name,
                    "shape": list(st.shape),
                    "dtype": st.dtype,
                    "chunks": len(st.chunks),
                    "split": _split(st),
                }
            )
    return {"world_size": d.world_size, "dcp_version": d.dcp_version, "names": len(d.names), "sharded": rows}


def _itemsize(kind: str, dtype: str) -> int:
    if kind == "numpy":
        try:
            return int(np.dtype(dtype).itemsize)
        except TypeError:
            return 0
    try:
        from ..format._tensors import element_size

        return element_size(kind, dtype)
    except UnsupportedFormatError:
        return 0


def _tensor_bytes(m: Manifest, j: int) -> int:
    e = m.tensors[j]
    n = 1
    for d in e.shape:
        n *= d
    return n * _itemsize(e.kind, e.dtype)


def show_summary(store: Store, info: CheckpointInfo) -> dict[str, Any]:
    m = store.manifest(id=info.id)
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
    groups = [
        {"key": name, "tensors": len(ids), "bytes": sum(_tensor_bytes(m, j) for j in ids)}
        for name, ids in _groups(m.tree, m)
        if ids
    ]
    return {
        "id": info.id,
        "step": info.step,
        "epoch": info.epoch,
        "created_at": info.created_at.isoformat(),
        "producer": dict(m.producer),
        "parent": m.parent,
        "tags": list(m.tags),
        "metrics": dict(m.metrics),
        "progress": progress_text(info.meta, info.step) or None,
        "meta": dict(info.meta),
        "config": info.config,
        "rng": rng,
        "tensors": {
            "count": len(m.tensors),
            "logical_bytes": m.stats.logical_bytes,
            "dtypes": {k: {"count": v[0], "bytes": v[1]} for k, v in sorted(dtypes.items())},
            "groups": groups,
        },
        "storage": {
            "objects": len(m.objects),
            "stored_bytes": m.stats.stored_bytes,
            "new_bytes": m.stats.new_bytes,
            "new_objects": m.stats.new_objects,
            "codecs": codecs,
        },
        "distributed": _sharding(m),
    }


def cmd_show(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        s = show_summary(store, store.info(args.step, id=args.id))
    if args.json:
        print(json.dumps(s, indent=2, default=repr))
        return 0
    epoch = "" if s["epoch"] is None else f", epoch {s['epoch']}"
    print(f"checkpoint {s['id'][:12]}  (step {s['step']}{epoch})")
    rows = [
        ("id", s["id"]),
        ("created", s["created_at"]),
        ("producer", ", ".join(f"{k} {v}" for k, v in s["producer"].items())),
        ("parent", s["parent"] or "-"),
        ("tags", ", ".join(s["tags"]) or "-"),
        ("metrics", "  ".join(f"{k}={v:.6g}" for k, v in s["metrics"].items()) or "-"),
    ]
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
    rows.append(
        (
            "storage",
            f"{st['objects']} objects, {fmt_bytes(st['stored_bytes'])} stored ({codecs}); "
            f"this save wrote {fmt_bytes(st['new_bytes'])} in {st['new_objects']} objects",
        )
    )
    dist = s["distributed"]
    if dist is not None:
        rows.append(
            (
                "distributed",
                f"written by {dist['world_size']} processes (torch.distributed.checkpoint "
                f"{dist['dcp_version'] or '?'}); {len(dist['sharded'])} of {dist['names']} "
                "values sharded",
            )
        )
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(w)}  {v}")
    if dist is not None and dist["sharded"]:
        print("sharded:")
        shown = dist["sharded"][:SHOW_SHARDED]
        nw = max(len(r["name"]) for r in shown)
        for r in shown:
            print(f"  {r['name'].ljust(nw)}  {r['dtype']}{r['shape']}  {r['chunks']} chunks  {r['split']}")
        if len(dist["sharded"]) > SHOW_SHARDED:
            print(f"  ... and {len(dist['sharded']) - SHOW_SHARDED} more (--json lists all)")
    if t["groups"]:
        print("state:")
        gw = max(len(g["key"]) for g in t["groups"])
        for g in t["groups"]:
            print(f"  {g['key'].ljust(gw)}  {g['tensors']:>6} tensors  {fmt_bytes(g['bytes']):>10}")
    print("config:")
    cfg = json.dumps(s["config"], indent=2, default=repr, sort_keys=False)
    print("\n".join("  " + ln for ln in cfg.splitlines()))
    return 0


# -- du ---------------------------------------------------------------------------------------
def cmd_du(args: argparse.Namespace) -> int:
    with open_store(args) as store:
        infos = store.list()
        from ..store._gc import DAMAGED_MANIFESTS, mark

        referenced, problems, manifests = mark(store)
        unreadable = bool(problems)
        users: dict[str, int] = {}
        size: dict[str, int] = {}
        for m in manifests.values():
            for k, oi in m.objects.items():
                users[k] = users.get(k, 0) + 1
                size[k] = oi.size
        rows: list[dict[str, Any]] = []
        infos_by_id = {i.id: i for i in infos}
        for i in infos:
            mi = manifests.get(i.key)
            if mi is None:
                continue
            unique = sum(oi.size for k, oi in mi.objects.items() if users.get(k) == 1)
            rows.append(
                {
                    "step": i.step,
                    "id": i.id,
                    "created_at": i.created_at.isoformat(),
                    "logical": i.size,
                    "stored": i.stored_bytes,
                    "unique": unique,
                    "new": i.new_bytes,
                }
            )
        garbage = garbage_bytes = 0
        on_storage = 0
        present: set[str] = set()
        for key in store.backend.list(OBJECTS_DIR):
            d = parse_object_key(key)
            if d is None:
                continue
            if d in referenced:
                on_storage += size[d]
                present.add(d)
            else:
                garbage += 1
                try:
                    garbage_bytes += store.backend.size(key)
                except OSError:
                    pass
    missing = sorted(referenced - present)
    for k in missing:  # counted nowhere: a referenced object that is not on storage takes no space
        steps = ", ".join(str(r["step"]) for r in rows if k in manifests[infos_by_id[r["id"]].key].objects)
        problems.append(f"object {k} ({fmt_bytes(size[k])}) is missing; checkpoint(s) at step {steps} need it")
    logical = sum(r["logical"] for r in rows)
    stored = on_storage
    out = {
        "checkpoints": rows,
        "logical_bytes": logical,
        "stored_bytes": stored,
        "referenced_objects": len(present),
        "missing_objects": len(missing),
        "missing_bytes": sum(size[k] for k in missing),
        "unreferenced_objects": garbage,
        "unreferenced_bytes": garbage_bytes,
        "problems": problems,
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 1 if problems else 0
    f = fmt_bytes
    table(
        ["step", "created (UTC)", "logical", "referenced", "only here", "written", "id"],
        [
            [
                str(r["step"]),
                r["created_at"][:19].replace("T", " "),
                f(r["logical"]),
                f(r["stored"]),
                f(r["unique"]),
                f(r["new"]),
                r["id"][:12],
            ]
            for r in rows
        ],
    )
    ratio = f"{logical / stored:.2f}x" if stored else "-"
    print(
        f"total: {f(logical)} of tensors in {len(rows)} checkpoint(s) stored in {f(stored)} "
        f"({len(present)} objects); dedup and compression: {ratio}"
        + (f"; {len(missing)} referenced object(s) missing (`ckptstore verify`)" if missing else "")
    )
    if garbage and unreadable:
        print(
            f"not used by a readable checkpoint: {f(garbage_bytes)} in {garbage} object(s) (some may belong to "
            "the damaged checkpoint(s); gc deletes nothing while a manifest cannot be read)"
        )
    elif garbage:
        print(
            f"unreferenced: {f(garbage_bytes)} in {garbage} object(s) (`ckptstore gc` removes them once "
            "they are older than the grace period)"
        )
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    if unreadable:
        print(f"note: {DAMAGED_MANIFESTS}", file=sys.stderr)
    return 1 if problems else 0
