"""``ckptstore dashboard`` (a web page of a run's checkpoints) and ``ckptstore diff`` (two checkpoints)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import TYPE_CHECKING, Any

from .._errors import CkptstoreError, PickleNotAllowedError
from ._common import add_store_arg, open_store, table, usage

if TYPE_CHECKING:
    from ..web._diff import CheckpointDiff


def add_parsers(sub: Any) -> None:
    d = sub.add_parser(
        "dashboard",
        help="a web page with the run's metrics, checkpoints, storage and health",
        description="Serve a read-only page on 127.0.0.1 (a free port unless --port) that refreshes while the "
        "run writes, or write it as one self-contained HTML file with --output. Opens no browser.",
    )
    add_store_arg(d)
    d.add_argument("--output", metavar="FILE", help="write the page to FILE (one self-contained HTML file) and exit")
    d.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    d.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS", help="how often the page checks the store")
    d.add_argument("--backup", metavar="URI", help="a backup store: the page shows which checkpoints it holds")
    d.add_argument("--compare", nargs=2, metavar=("A", "B"), help="with --output: include the diff of A and B")
    d.add_argument(
        "--allow-pickle", action="store_true", help="with --compare: the checkpoints hold pickled values you trust"
    )
    d.set_defaults(func=cmd_dashboard)

    df = sub.add_parser(
        "diff",
        help="compare two checkpoints: config, metrics, plain values, tensors added/removed/changed, "
        "relative change per tensor and layer",
        description="A and B are steps, ids (or unique prefixes; id:PREFIX forces an id) or 'latest'. Loads both "
        "checkpoints' tensors unless --no-load (then changed tensors are listed without how much they changed). "
        "The state's plain values (not tensors) are compared from the manifests; a list of more than 16 "
        "items is one value.",
    )
    add_store_arg(df)
    df.add_argument("a", metavar="A", help="the older checkpoint: a step, an id prefix, or latest")
    df.add_argument("b", metavar="B", nargs="?", default="latest", help="the newer one (default: latest)")
    df.add_argument("--no-load", action="store_true", help="compare manifests only (no tensor data is read)")
    df.add_argument("--all", action="store_true", help="also list the tensors that are identical")
    df.add_argument("--allow-pickle", action="store_true", help="the checkpoints hold pickled values you trust")
    df.add_argument("--json", action="store_true", help="print JSON")
    df.set_defaults(func=cmd_diff)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from ..web._api import dashboard

    if args.compare and not args.output:
        return usage("dashboard", "--compare needs --output (the served page compares on demand)")
    if args.refresh <= 0:
        return usage("dashboard", "--refresh must be a positive number of seconds")
    if not 0 <= args.port <= 65535:
        return usage("dashboard", "--port must be from 0 (a free port) to 65535")
    if args.output:
        try:
            with open_store(args) as store:
                path = dashboard(
                    store,
                    output=args.output,
                    backup=args.backup,
                    compare=tuple(args.compare) if args.compare else None,
                    allow_pickle=args.allow_pickle,
                )
        except PickleNotAllowedError as e:
            print(f"ckptstore: error: {e} (on the command line: --allow-pickle)", file=sys.stderr)
            return 1
        except OSError as e:
            if isinstance(e, CkptstoreError):
                raise
            print(f"ckptstore: error: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
            return 1
        print(f"wrote the dashboard of {args.uri} to {path}")
        return 0
    with open_store(args) as store:
        if not store.exists() and store.backend.root_state() == "file":  # no run can save there
            raise store.catalog.not_found()
        try:
            server = dashboard(store, port=args.port, refresh=args.refresh, backup=args.backup)
        except OSError as e:  # the port is taken
            raise SystemExit(f"ckptstore: cannot serve on 127.0.0.1:{args.port}: {e.strerror or e}") from None
        print(f"dashboard of {args.uri} at {server.url}  (read-only; Ctrl+C stops it)", flush=True)
        if not store.exists():
            print(f"no store at {args.uri} yet: the page shows it once a run saves there", flush=True)
        try:
            server.wait()
        finally:
            server.close()
    print("dashboard stopped", flush=True)
    return 0


def _rel(v: float | None) -> str:
    if v is None:
        return ""
    if math.isinf(v):
        return "inf (was all zeros)"
    return f"{v:.3g}"


_VALUES_SHOWN = 40


def _short(v: Any, limit: int = 80) -> str:
    from ..web._diff import long_sequence

    long = long_sequence(v)
    if long is not None:
        return long
    text = json.dumps(v) if v is None or isinstance(v, (bool, int, str)) else repr(v)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def cmd_diff(args: argparse.Namespace) -> int:
    from ..web._api import diff_checkpoints

    try:
        with open_store(args) as store:
            d = diff_checkpoints(store, args.a, args.b, load=not args.no_load, allow_pickle=args.allow_pickle)
    except PickleNotAllowedError as e:
        print(f"ckptstore: error: {e} (on the command line: --allow-pickle)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(d.to_json(), indent=2))
        return 0
    print_diff(d, show_identical=args.all)
    return 0


def print_diff(d: CheckpointDiff, *, show_identical: bool = False) -> None:
    j = d.to_json()
    counts = ", ".join(f"{n} {k}" for k, n in j["counts"].items()) or "no tensors"
    print(
        f"step {d.a.step} ({d.a.short_id}) -> step {d.b.step} ({d.b.short_id}): {counts}; "
        f"{j['deduplicated']} deduplicated (stored once)"
    )
    if d.config:
        print("config:")
        for path, x, y in d.config:
            print(f"  {path}: {json.dumps(x, default=repr)} -> {json.dumps(y, default=repr)}")
    else:
        print("config: the same")
    if d.metrics:
        print("metrics:")
        for name, x, y in d.metrics:
            print(f"  {name}: {x} -> {y}")
    if d.values:
        print("values (not tensors):")
        for path, x, y in d.values[:_VALUES_SHOWN]:
            print(f"  {path}: {_short(x)} -> {_short(y)}")
        if len(d.values) > _VALUES_SHOWN:
            print(f"  (+{len(d.values) - _VALUES_SHOWN} more; --json lists them all)")
    else:
        print("values (not tensors): the same")
    rows = []
    for t in d.tensors:
        if t.status == "identical" and not show_identical:
            continue
        shape = "x".join(map(str, t.shape)) or "scalar"
        if t.old_shape is not None and (t.old_shape != t.shape or t.old_dtype != t.dtype):
            shape = f"{'x'.join(map(str, t.old_shape)) or 'scalar'} {t.old_dtype} -> {shape}"
        rows.append([t.name, t.status, shape, t.dtype, _rel(t.relative_change), "yes" if t.deduplicated else ""])
    if rows:
        print("tensors:")
        table(["tensor", "status", "shape", "dtype", "relative change", "dedup"], rows)
    changed_layers = [la for la in d.layers if la.changed]
    if changed_layers:
        print("layers with changes:")
        table(
            ["layer", "tensors", "changed", "relative change"],
            [[la.name, str(la.tensors), str(la.changed), _rel(la.relative_change)] for la in changed_layers],
        )
    if not d.loaded and d.by_status("changed"):
        print("(tensors not loaded: run without --no-load to measure the changes)")
    same = d.by_status("identical")
    if same and not show_identical:
        print(f"{len(same)} identical tensor(s) not listed (--all lists them)")
