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
    from ._store import Store

    with Store(args.uri, storage_options=_storage_options(args)) as store:
        infos = store.list()
    if args.json:
        rows = [{"id": i.id, "step": i.step, "epoch": i.epoch, "created_at": i.created_at.isoformat(),
                 "size": i.size, "new_bytes": i.new_bytes, "metrics": dict(i.metrics), "tags": list(i.tags)}
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
    from ._cli_interop import add_commands as add_interop_commands

    add_interop_commands(sub, common)  # import, export
    return p


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
