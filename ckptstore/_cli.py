"""The ``ckptstore`` command line. ``main(argv) -> exit code`` (0 ok, 1 problems, 2 usage)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ._errors import CkptstoreError


def _size(n: int) -> str:
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(n)  # pragma: no cover


def _storage_options(args: argparse.Namespace) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in args.storage_option or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"ckptstore: --storage-option needs KEY=VALUE, got {item!r}")
        try:
            opts[k] = json.loads(v)
        except ValueError:
            opts[k] = v
    return opts


def _cmd_ls(args: argparse.Namespace) -> int:
    from ._commands import progress_text
    from ._store import Store

    with Store(args.uri, storage_options=_storage_options(args)) as store:
        infos = store.list()
    if args.json:
        rows = [{"id": i.id, "step": i.step, "epoch": i.epoch, "created_at": i.created_at.isoformat(),
                 "size": i.size, "new_bytes": i.new_bytes, "metrics": dict(i.metrics), "tags": list(i.tags),
                 "progress": progress_text(i.meta, i.step) or None}
                for i in infos]
        print(json.dumps(rows, indent=2))
        return 0
    if not infos:
        print(f"no checkpoints in {args.uri}")
        return 0
    head = ["step", "epoch", "created (UTC)", "size", "new", "metrics", "tags", "id"]
    body = [[str(i.step), "" if i.epoch is None else str(i.epoch), i.created_at.strftime("%Y-%m-%d %H:%M:%S"),
             _size(i.size), _size(i.new_bytes), " ".join(f"{k}={v:.4g}" for k, v in i.metrics.items()),
             ",".join(i.tags), i.short_id] for i in infos]
    progress = [progress_text(i.meta, i.step) for i in infos]
    if any(progress):
        head.insert(-1, "progress")
        for r, p in zip(body, progress):
            r.insert(-1, p)
    widths = [max(len(r[c]) for r in [head, *body]) for c in range(len(head))]
    for r in [head, *body]:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="ckptstore", description="Safe, small, fast PyTorch checkpoints.")
    p.add_argument("--version", action="version", version=f"ckptstore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("uri", help="store location: a path, file://, memory://, s3://, gs://, ...")
        sp.add_argument("-o", "--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec storage option (value parsed as JSON when it can be); repeatable")

    ls = sub.add_parser("ls", help="list checkpoints")
    common(ls)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.set_defaults(func=_cmd_ls)
    _add_maintenance(sub, common)
    return p


def _add_maintenance(sub: Any, common: Any) -> None:
    """``show``, ``gc``, ``verify``, ``du`` (implemented in ckptstore/_commands.py and _fsck.py)."""
    from . import _commands as c
    from . import _fsck

    show = sub.add_parser("show", help="one checkpoint in detail: config, metrics, RNG, tensors")
    common(show)
    show.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    show.add_argument("--id", help="the checkpoint with this id (or unique prefix)")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=c.cmd_show)

    gc = sub.add_parser("gc", help="apply a retention policy and delete unreferenced data",
                        description="Forget the checkpoints the policy does not keep, then delete objects no "
                                    "checkpoint references. Without rules, applies the policy stored in the store "
                                    "(or only prunes). The newest checkpoint is always kept.")
    common(gc)
    gc.add_argument("--keep-last", type=c.positive_int, metavar="N", help="keep the N newest checkpoints")
    gc.add_argument("--keep-best", type=c.parse_keep_best, metavar="METRIC:min|max[:K]",
                    help="keep the K (default 1) best checkpoints by METRIC")
    gc.add_argument("--keep-every", type=c.positive_int, metavar="K",
                    help="keep checkpoints whose step is a multiple of K")
    gc.add_argument("--keep-within", type=c.duration_arg, metavar="DURATION",
                    help="keep checkpoints created within DURATION (7d, 12h, 1d12h) of the newest")
    gc.add_argument("--keep-tag", action="append", metavar="TAG",
                    help="keep checkpoints with this tag (repeatable; 'pinned' is always kept)")
    gc.add_argument("--dry-run", action="store_true", help="print what would happen; change nothing")
    gc.add_argument("--set-policy", action="store_true", help="also store these rules as the store's policy")
    gc.add_argument("--grace", type=c.duration_arg, metavar="DURATION",
                    help="delete unreferenced objects of aborted saves only when older than this (default 1h)")
    gc.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                    help="wait this long for saves in progress before deleting objects (default 60)")
    gc.add_argument("--json", action="store_true", help="print JSON")
    gc.set_defaults(func=c.cmd_gc)

    verify = sub.add_parser("verify", help="check checkpoints: structure, objects, and with --read-data every byte")
    common(verify)
    verify.add_argument("--step", type=int, help="only the checkpoint(s) at this step (default: all)")
    verify.add_argument("--read-data", action="store_true", help="read every object and check its hash")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=_fsck.cmd_verify)

    du = sub.add_parser("du", help="space per checkpoint: logical size vs bytes actually stored")
    common(du)
    du.add_argument("--json", action="store_true", help="print JSON")
    du.set_defaults(func=c.cmd_du)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 2
    try:
        return int(args.func(args))
    except CkptstoreError as e:
        print(f"ckptstore: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ckptstore: interrupted", file=sys.stderr)
        return 130
