"""``ckptstore cp``: copy checkpoints between stores, deduplicated and verified."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .._units import fmt_bytes
from ..format._layout import parse_manifest_key
from ._common import add_retries_arg, key_value, storage_options


def cmd_cp(args: argparse.Namespace) -> int:
    from .._api import copy_checkpoints
    from ..store._copy import CopyIncompleteError
    from ..store._store import Store

    """``ckptstore cp SRC DST``: copy checkpoints, deduplicated and verified, manifests last.
    A damaged source checkpoint is reported and the healthy ones are still copied (exit 1)."""
    shared = storage_options(args.storage_option)
    damaged: list[tuple[int, str, str]] = []  # (step, id, why)
    with Store(args.src, storage_options={**shared, **storage_options(args.src_option)}, retries=args.retries) as src:
        try:
            result = copy_checkpoints(
                src,
                args.dst,
                steps=args.step,
                ids=args.id,
                all=args.all,
                latest=args.latest,
                dst_options={**shared, **storage_options(args.dst_option)},
                retries=args.retries,
                workers=args.workers,
                readback=args.readback,
                repair=args.repair,
                progress=False if args.quiet else (True if sys.stderr.isatty() else None),
            )
        except CopyIncompleteError as e:
            result = e.result
            damaged += [(i.step, i.id, why) for i, why in e.damaged]
        if args.all or args.latest is not None:  # manifests the listing skipped (each warned once)
            for key, why in src.catalog.damaged().items():
                step, digest = parse_manifest_key(key) or (-1, key)
                damaged.append((step, digest, why))
        damaged.sort()
    left: list[tuple[int, str, str]] = []  # --repair: manifests still damaged in DST (the source lacks them)
    if args.repair:
        from ..store._gc import select_manifests

        with Store(args.dst, storage_options={**shared, **storage_options(args.dst_option)}, retries=args.retries) as d:
            left = [(e.step, e.id, e.damage or "") for e in select_manifests(d, damaged=True)]
    if args.json:
        doc = {
            "copied": [{"id": i.id, "step": i.step} for i in result.copied],
            "present": [{"id": i.id, "step": i.step} for i in result.present],
            "objects_copied": result.objects_copied,
            "bytes_copied": result.bytes_copied,
            "objects_present": result.objects_present,
            "bytes_present": result.bytes_present,
            "replaced": result.replaced,
            "config_rewritten": result.config_rewritten,
            "damaged": [{"step": step, "id": id_, "problem": why} for step, id_, why in damaged],
            "still_damaged_in_dst": [{"step": step, "id": id_, "problem": why} for step, id_, why in left],
        }
        print(json.dumps(doc, indent=2))
        return 1 if damaged or left else 0
    if result.copied:
        steps = ", ".join(str(i.step) for i in result.copied)
        print(
            f"copied {len(result.copied)} checkpoint(s) (step {steps}) to {args.dst}: "
            f"{result.objects_copied} objects, {fmt_bytes(result.bytes_copied)} sent; "
            f"{result.objects_present} objects ({fmt_bytes(result.bytes_present)}) were already there"
        )
    if result.present:
        steps = ", ".join(str(i.step) for i in result.present)
        print(f"already in {args.dst}: step {steps}")
    if args.repair:
        print(f"repaired {result.replaced} damaged object(s), manifest(s) and config(s) in {args.dst}")
    if result.config_rewritten:
        print(
            f"note: {args.dst}/ckptstore.json was damaged or missing: written again without a retention "
            "policy; store one "
            f"with `ckptstore gc {args.dst} --set-policy --keep-...`",
            file=sys.stderr,
        )
    for step, id_, why in damaged:
        print(f"ckptstore: damaged, not copied: step {step} ({id_[:12]}): {why}", file=sys.stderr)
    if damaged:
        print(
            f"ckptstore: {len(damaged)} damaged checkpoint(s) not copied; `ckptstore verify {args.src}` shows them",
            file=sys.stderr,
        )
    for step, id_, _why in left:
        print(
            f"ckptstore: still damaged in {args.dst}: step {step} ({id_[:12]}), which SRC does not hold",
            file=sys.stderr,
        )
    if left:
        ids = " ".join(id_[:12] for _s, id_, _w in left)
        print(f"ckptstore: remove them with `ckptstore forget {args.dst} --id {ids}`", file=sys.stderr)
    return 1 if damaged or left else 0


def add_parsers(sub: Any) -> None:
    def positive(v: str) -> int:
        n = int(v)
        if n < 1:
            raise argparse.ArgumentTypeError("must be at least 1")
        return n

    cp = sub.add_parser(
        "cp",
        help="copy checkpoints to another store (deduplicated, verified)",
        description="Copy checkpoints from SRC to DST (any two URIs). Only objects DST lacks "
        "travel, each verified against its hash; manifests go last, so an "
        "interrupted copy leaves DST consistent and a rerun resumes. Without "
        "--step/--id/--all/--latest, the newest checkpoint is copied; given several, every "
        "checkpoint any of them selects is copied.",
    )
    cp.add_argument("src", help="source store URI")
    cp.add_argument("dst", help="destination store URI (created if missing)")
    cp.add_argument("--step", type=int, nargs="+", action="extend", metavar="N", help="step(s) to copy")
    cp.add_argument("--id", nargs="+", action="extend", metavar="ID", help="checkpoint id(s) or unique prefixes")
    cp.add_argument("--all", action="store_true", help="copy every checkpoint")
    cp.add_argument("--latest", type=positive, metavar="K", help="copy the newest K checkpoints")
    cp.add_argument(
        "-o",
        "--storage-option",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="fsspec storage option for both stores (JSON value when it parses); repeatable",
    )
    cp.add_argument(
        "--src-option", action="append", type=key_value, metavar="KEY=VALUE", help="storage option for SRC only"
    )
    cp.add_argument(
        "--dst-option", action="append", type=key_value, metavar="KEY=VALUE", help="storage option for DST only"
    )
    add_retries_arg(cp)
    cp.add_argument("--workers", type=positive, metavar="N", help="parallel transfers")
    cp.add_argument("--readback", action="store_true", help="also read every new object back from DST and check it")
    cp.add_argument(
        "--repair",
        action="store_true",
        help="first read what DST already holds of these checkpoints and replace what is damaged "
        "(restore a damaged store from its backup)",
    )
    cp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    cp.add_argument("--json", action="store_true", help="print the result as JSON")
    cp.set_defaults(func=cmd_cp)
