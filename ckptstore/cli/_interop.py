"""``ckptstore import`` and ``ckptstore export`` (the work is done in ``ckptstore.interop``)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from .._errors import CkptstoreError, PickleNotAllowedError
from .._units import fmt_bytes
from ._common import add_retries_arg, add_store_arg, key_value, open_store, storage_options


def cmd_import(args: argparse.Namespace) -> int:
    from ..interop import import_checkpoint
    from ..store._store import Store

    options = storage_options(args.storage_option)
    try:
        with Store(args.dst, storage_options=options, retries=args.retries) as dst:
            before = {i.id for i in dst.list()} if dst.exists() else set()
            infos = import_checkpoint(
                args.src,
                dst,
                step=args.step,
                epoch=args.epoch,
                tags=args.tag or (),
                allow_pickle=args.allow_pickle,
            )
    except CkptstoreError:
        raise  # main says it in the command's words
    except (OSError, ValueError) as e:  # a wrong path, a file that is not a checkpoint
        print(f"ckptstore: error: {e}", file=sys.stderr)
        return 1
    for i in infos:
        src = i.meta.get("imported_from")
        if i.id in before:
            print(f"already imported {src} as step {i.step} ({i.short_id}) in {args.dst}")
        else:
            print(
                f"imported {src} -> step {i.step} ({i.short_id}) in {args.dst}: "
                f"{i.meta.get('framework')}, {fmt_bytes(i.size)}, {fmt_bytes(i.new_bytes)} new"
            )
    if infos and all(i.id in before for i in infos):
        print("nothing written: every source was imported before (same bytes)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..interop import export_checkpoint

    out = os.path.abspath(args.dst)
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:  # before opening the store
        print(
            f"ckptstore: error: {out} exists and is not empty; pick a new folder or pass --overwrite", file=sys.stderr
        )
        return 1
    try:
        with open_store(args) as store:
            info, files = export_checkpoint(
                store, args.dst, step=args.step, id=args.id, allow_pickle=args.allow_pickle, overwrite=args.overwrite
            )
    except PickleNotAllowedError as e:
        print(f"ckptstore: error: {e} (on the command line: --allow-pickle)", file=sys.stderr)
        return 1
    except CkptstoreError:
        raise  # main says it in the command's words
    except (OSError, ValueError) as e:  # DST exists, a wrong path
        print(f"ckptstore: error: {e}", file=sys.stderr)
        return 1
    print(f"exported step {info.step} ({info.short_id}) to {args.dst}: {', '.join(files)}")
    return 0


def add_parsers(sub: Any) -> None:
    imp = sub.add_parser("import", help="import HF checkpoint-N folders, Lightning .ckpt or torch.save files")
    imp.add_argument("src", help="a checkpoint-N folder, a Trainer output folder, a .ckpt/.pt file or a folder of them")
    imp.add_argument("dst", help="store location (created if needed)")
    imp.add_argument(
        "-o", "--storage-option", action="append", type=key_value, metavar="KEY=VALUE", help="fsspec option for DST"
    )
    add_retries_arg(imp)
    imp.add_argument("--step", type=int, help="step to record (default: read from the files)")
    imp.add_argument("--epoch", type=int, help="epoch to record (default: read from the files)")
    imp.add_argument("--tag", action="append", help="tag the imported checkpoints; repeatable")
    imp.add_argument(
        "--allow-pickle",
        action="store_true",
        help="unpickle files that hold more than tensors and plain data: runs code from the file, "
        "use only for files you trust (default: torch.load(weights_only=True))",
    )
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="write a checkpoint out as plain files a framework loads or resumes from")
    add_store_arg(exp)
    exp.add_argument("dst", help="folder to create")
    exp.add_argument("--step", type=int, help="the checkpoint at this step (default: the newest)")
    exp.add_argument("--id", help="the checkpoint with this id (or unique prefix)")
    exp.add_argument("--overwrite", action="store_true", help="replace DST if it is an earlier export")
    exp.add_argument("--allow-pickle", action="store_true", help="also write values stored with pickle")
    exp.set_defaults(func=cmd_export)
