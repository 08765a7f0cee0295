"""``ckptstore import`` and ``ckptstore export`` (the work is done in ``ckptstore.interop``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from .._units import fmt_bytes
from ..interop import export_checkpoint, import_checkpoint
from ._common import add_store_arg, storage_options


def cmd_import(args: argparse.Namespace) -> int:

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            infos = import_checkpoint(
                args.src,
                args.dst,
                step=args.step,
                epoch=args.epoch,
                tags=args.tag or (),
                allow_pickle=args.allow_pickle,
                storage_options=storage_options(args.storage_option),
            )
    except (OSError, ValueError) as e:  # a wrong path, a file that is not a checkpoint
        print(f"ckptstore: error: {e}", file=sys.stderr)
        return 1
    for note in dict.fromkeys(str(w.message) for w in caught):
        print(f"ckptstore: note: {note}", file=sys.stderr)
    for i in infos:
        print(
            f"imported {i.meta.get('imported_from')} -> step {i.step} ({i.short_id}) in {args.dst}: "
            f"{i.meta.get('framework')}, {fmt_bytes(i.size)}, {fmt_bytes(i.new_bytes)} new"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:

    try:
        info, files = export_checkpoint(
            args.uri,
            args.dst,
            step=args.step,
            id=args.id,
            allow_pickle=args.allow_pickle,
            overwrite=args.overwrite,
            storage_options=storage_options(args.storage_option),
        )
    except (OSError, ValueError) as e:  # DST exists, a wrong path
        print(f"ckptstore: error: {e}", file=sys.stderr)
        return 1
    print(f"exported step {info.step} ({info.short_id}) to {args.dst}: {', '.join(files)}")
    return 0


def add_parsers(sub: Any) -> None:
    imp = sub.add_parser("import", help="import HF checkpoint-N folders, Lightning .ckpt or torch.save files")
    imp.add_argument("src", help="a checkpoint-N folder, a Trainer output folder, a .ckpt/.pt file or a folder of them")
    imp.add_argument("dst", help="store location (created if needed)")
    imp.add_argument("-o", "--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option for DST")
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
    exp.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    exp.add_argument("--allow-pickle", action="store_true", help="also write values stored with pickle")
    exp.set_defaults(func=cmd_export)
