"""The ``ckptstore`` command line. ``main(argv) -> exit code`` (0 ok, 1 problems, 2 usage)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from ._errors import CkptstoreError
from ._space import fmt_bytes


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
             fmt_bytes(i.size), fmt_bytes(i.new_bytes), " ".join(f"{k}={v:.4g}" for k, v in i.metrics.items()),
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


def _cmd_cp(args: argparse.Namespace) -> int:
    """``ckptstore cp SRC DST``: copy checkpoints, deduplicated and verified, manifests last."""
    from ._copy import copy_checkpoints

    def options(items: list[str] | None) -> dict[str, Any]:
        ns = argparse.Namespace(storage_option=items)
        return _storage_options(ns)

    shared = options(args.storage_option)
    result = copy_checkpoints(
        args.src, args.dst, steps=args.step, ids=args.id, all=args.all, latest=args.latest,
        src_options={**shared, **options(args.src_option)}, dst_options={**shared, **options(args.dst_option)},
        retries=args.retries, workers=args.workers, readback=args.readback,
        progress=False if args.quiet else (True if sys.stderr.isatty() else None))
    if args.json:
        print(json.dumps({
            "copied": [{"id": i.id, "step": i.step} for i in result.copied],
            "present": [{"id": i.id, "step": i.step} for i in result.present],
            "objects_copied": result.objects_copied, "bytes_copied": result.bytes_copied,
            "objects_present": result.objects_present, "bytes_present": result.bytes_present}, indent=2))
        return 0
    if result.copied:
        steps = ", ".join(str(i.step) for i in result.copied)
        print(f"copied {len(result.copied)} checkpoint(s) (step {steps}) to {args.dst}: "
              f"{result.objects_copied} objects, {fmt_bytes(result.bytes_copied)} sent; "
              f"{result.objects_present} objects ({fmt_bytes(result.bytes_present)}) were already there")
    if result.present:
        steps = ", ".join(str(i.step) for i in result.present)
        print(f"already in {args.dst}: step {steps}")
    return 0


def _add_cp(sub: Any) -> None:
    def positive(v: str) -> int:
        n = int(v)
        if n < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return n

    cp = sub.add_parser("cp", help="copy checkpoints to another store (deduplicated, verified)",
                        description="Copy checkpoints from SRC to DST (any two URIs). Only objects DST lacks "
                                    "travel, each verified against its hash; manifests go last, so an "
                                    "interrupted copy leaves DST consistent and a rerun resumes. Without "
                                    "--step/--id/--all/--latest, the newest checkpoint is copied.")
    cp.add_argument("src", help="source store URI")
    cp.add_argument("dst", help="destination store URI (created if missing)")
    cp.add_argument("--step", type=int, nargs="+", action="extend", metavar="N", help="step(s) to copy")
    cp.add_argument("--id", nargs="+", action="extend", metavar="ID", help="checkpoint id(s) or unique prefixes")
    cp.add_argument("--all", action="store_true", help="copy every checkpoint")
    cp.add_argument("--latest", type=positive, metavar="K", help="copy the newest K checkpoints")
    cp.add_argument("-o", "--storage-option", action="append", metavar="KEY=VALUE",
                    help="fsspec storage option for both stores (JSON value when it parses); repeatable")
    cp.add_argument("--src-option", action="append", metavar="KEY=VALUE", help="storage option for SRC only")
    cp.add_argument("--dst-option", action="append", metavar="KEY=VALUE", help="storage option for DST only")
    cp.add_argument("--retries", type=int, metavar="N", help="retries per storage request (default 3)")
    cp.add_argument("--workers", type=positive, metavar="N", help="parallel transfers")
    cp.add_argument("--readback", action="store_true", help="also read every new object back from DST and check it")
    cp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cp.add_argument("--json", action="store_true", help="print the result as JSON")
    cp.set_defaults(func=_cmd_cp)


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
    _add_cp(sub)
    from ._cli_interop import add_commands as add_interop_commands

    add_interop_commands(sub, common)  # import, export
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
