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


def _cmd_import(args: argparse.Namespace) -> int:
    from .adapters.interop import import_checkpoint

    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infos = import_checkpoint(args.src, args.dst, step=args.step, epoch=args.epoch, tags=args.tag or (),
                                      allow_pickle=args.allow_pickle, storage_options=_storage_options(args))
    except (OSError, ValueError) as e:  # a wrong path, a file that is not a checkpoint
        print(f"ckptstore: error: {e}", file=sys.stderr)
        return 1
    for note in dict.fromkeys(str(w.message) for w in caught):
        print(f"ckptstore: note: {note}", file=sys.stderr)
    for i in infos:
        print(f"imported {i.meta.get('imported_from')} -> step {i.step} ({i.short_id}) in {args.dst}: "
              f"{i.meta.get('framework')}, {_size(i.size)}, {_size(i.new_bytes)} new")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .adapters.interop import export_checkpoint

    try:
        info, files = export_checkpoint(args.uri, args.dst, step=args.step, id=args.id,
                                        allow_pickle=args.allow_pickle, overwrite=args.overwrite,
                                        storage_options=_storage_options(args))
    except (OSError, ValueError) as e:  # DST exists, a wrong path
        print(f"ckptstore: error: {e}", file=sys.stderr)
        return 1
    print(f"exported step {info.step} ({info.short_id}) to {args.dst}: {', '.join(files)}")
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

    imp = sub.add_parser("import", help="import HF checkpoint-N folders, Lightning .ckpt or torch.save files")
    imp.add_argument("src", help="a checkpoint-N folder, a Trainer output folder, a .ckpt/.pt file or a folder of them")
    imp.add_argument("dst", help="store location (created if needed)")
    imp.add_argument("-o", "--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option for DST")
    imp.add_argument("--step", type=int, help="step to record (default: read from the files)")
    imp.add_argument("--epoch", type=int, help="epoch to record (default: read from the files)")
    imp.add_argument("--tag", action="append", help="tag the imported checkpoints; repeatable")
    imp.add_argument("--allow-pickle", action="store_true",
                     help="unpickle files that hold more than tensors and plain data: runs code from the file, "
                          "use only for files you trust (default: torch.load(weights_only=True))")
    imp.set_defaults(func=_cmd_import)

    exp = sub.add_parser("export", help="write a checkpoint out as plain files a framework loads or resumes from")
    common(exp)
    exp.add_argument("dst", help="folder to create")
    exp.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    exp.add_argument("--id", help="the checkpoint with this id (or unique prefix)")
    exp.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    exp.add_argument("--allow-pickle", action="store_true", help="also write values stored with pickle")
    exp.set_defaults(func=_cmd_export)
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
