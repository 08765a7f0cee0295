"""``ckptstore gc`` (apply a retention policy, then delete unreferenced data) and ``ckptstore forget``."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .._errors import CkptstoreWarning, InvalidArgumentError
from .._units import fmt_bytes
from ..store._retention import Retention, format_duration, parse_duration
from ._common import add_store_arg, open_store, positive_int, table, usage, when

if TYPE_CHECKING:
    from ..format._info import CheckpointInfo


def add_parsers(sub: Any) -> None:
    gc = sub.add_parser(
        "gc",
        help="apply a retention policy and delete unreferenced data",
        description="Forget the checkpoints the policy does not keep, then delete objects no "
        "checkpoint references. Without rules, applies the policy stored in the store "
        "(or only prunes). The newest checkpoint is always kept.",
    )
    add_store_arg(gc)
    gc.add_argument("--keep-last", type=positive_int, metavar="N", help="keep the N newest checkpoints")
    gc.add_argument(
        "--keep-best",
        type=parse_keep_best,
        metavar="METRIC:min|max[:K]",
        help="keep the K (default 1) best checkpoints by METRIC",
    )
    gc.add_argument(
        "--keep-every", type=positive_int, metavar="K", help="keep checkpoints whose step is a multiple of K"
    )
    gc.add_argument(
        "--keep-within",
        type=positive_duration_arg,
        metavar="DURATION",
        help="keep checkpoints created within DURATION (7d, 12h, 1d12h) of the newest",
    )
    gc.add_argument(
        "--keep-tag",
        action="append",
        metavar="TAG",
        help="keep checkpoints with this tag (repeatable; 'pinned' is always kept)",
    )
    gc.add_argument("--dry-run", action="store_true", help="print what would happen; change nothing")
    gc.add_argument(
        "--set-policy",
        action="store_true",
        help="also store these rules as the store's policy (this also repairs a damaged ckptstore.json)",
    )
    gc.add_argument(
        "--clear-policy",
        action="store_true",
        help="remove the store's policy, then only prune (this also repairs a damaged ckptstore.json)",
    )
    gc.add_argument(
        "--grace",
        type=duration_arg,
        metavar="DURATION",
        help="delete unreferenced objects of aborted saves only when older than this (default 1h)",
    )
    gc.add_argument(
        "--wait",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for saves in progress before deleting objects (default 60)",
    )
    gc.add_argument("--json", action="store_true", help="print JSON")
    gc.set_defaults(func=cmd_gc)

    fg = sub.add_parser(
        "forget",
        help="remove checkpoints by step or id, or every damaged one (their data stays until gc)",
        description="Delete the manifests of the checkpoints named, damaged ones included (a damaged "
        "manifest stops gc from deleting any object until it is removed or copied again from a backup). "
        "The data only they used stays until `ckptstore gc` deletes it.",
    )
    add_store_arg(fg)
    fg.add_argument("--step", type=int, nargs="+", action="extend", metavar="N", help="the checkpoint at step(s) N")
    fg.add_argument("--id", nargs="+", action="extend", metavar="ID", help="checkpoint id(s) or unique prefixes")
    fg.add_argument("--damaged", action="store_true", help="every checkpoint whose manifest is damaged")
    fg.add_argument("--dry-run", action="store_true", help="print what would be removed; change nothing")
    fg.add_argument("--json", action="store_true", help="print JSON")
    fg.set_defaults(func=cmd_forget)


def cmd_forget(args: argparse.Namespace) -> int:
    from ..store._gc import forget_manifests, select_manifests

    if not (args.step or args.id or args.damaged):
        return usage("forget", "name what to forget: --step N, --id ID or --damaged")
    with open_store(args) as store:
        store.catalog.config()  # StoreNotFoundError before anything else
        chosen = select_manifests(store, steps=args.step or (), ids=args.id or (), damaged=args.damaged)
        done = chosen if args.dry_run else forget_manifests(store, chosen)
    if args.json:
        doc = {
            "dry_run": args.dry_run,
            "forgotten": [{"step": e.step, "id": e.id, "damage": e.damage} for e in done],
        }
        print(json.dumps(doc, indent=2))
        return 0
    verb = "would forget" if args.dry_run else "forgot"
    for e in done:
        print(f"{verb} step {e.step} ({e.id[:12]})" + (f": damaged ({e.damage})" if e.damage else ""))
    if not done:
        print("no damaged checkpoint found: nothing to forget")
    elif not args.dry_run:
        print(f"{len(done)} checkpoint(s) forgotten; `ckptstore gc {args.uri}` deletes the data no checkpoint uses")
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
    if text.strip() == "0":  # no unit needed for nothing (--grace 0)
        return timedelta(0)
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def positive_duration_arg(text: str) -> timedelta:
    td = duration_arg(text)
    if td <= timedelta(0):
        raise argparse.ArgumentTypeError(f"must be longer than nothing, like 7d or 12h, not {text!r}")
    return td


def policy_from_args(args: argparse.Namespace) -> Retention | None:
    given = [args.keep_last, args.keep_best, args.keep_every, args.keep_within]
    if all(v is None for v in given) and not args.keep_tag:
        return None
    tags = tuple(dict.fromkeys(["pinned", *(args.keep_tag or [])]))
    return Retention(
        keep_last=args.keep_last,
        keep_best=args.keep_best,
        keep_every=args.keep_every,
        keep_within=args.keep_within,
        keep_tags=tags,
    )


def unknown_metric(policy: Retention, infos: list[CheckpointInfo]) -> str | None:
    """What is wrong when ``keep_best`` names a metric that no checkpoint in ``infos`` has."""
    best = policy.best
    if best is None or not infos:
        return None
    have = sorted({k for i in infos for k in i.metrics})
    if best[0] in have:
        return None
    known = f"the metrics that exist: {', '.join(have)}" if have else "no checkpoint records any metric"
    return f"--keep-best {best[0]}:{best[1]}: no checkpoint has a metric {best[0]!r} ({known})"


def cmd_gc(args: argparse.Namespace) -> int:
    policy = policy_from_args(args)
    if args.clear_policy and (policy is not None or args.set_policy):
        return usage("gc", "--clear-policy takes no --keep-... rules and no --set-policy")
    if args.set_policy and policy is None:
        return usage("gc", "--set-policy needs rules to store (--keep-...); --clear-policy removes the policy")
    grace = None if args.grace is None else args.grace.total_seconds()
    with open_store(args) as store:
        store.catalog.config()  # StoreNotFoundError before anything else
        source = "command line"
        if policy is not None:
            wrong = unknown_metric(policy, store.list())
            if wrong is not None:  # it would keep nothing by that rule, silently
                raise InvalidArgumentError(f"{wrong}. Name one of those, or leave the rule out.")
        if args.clear_policy:
            if args.dry_run:  # nothing else to show: the prune is judged once the policy is gone
                print("dry run: would remove the store's retention policy, then prune unreferenced data")
                return 0
            store.set_retention(None)
            if not args.json:
                print("removed the store's retention policy")
        elif policy is None:
            policy = store.get_retention()
            source = "stored in the store"
            wrong = None if policy is None else unknown_metric(policy, store.list())
            if wrong is not None:
                warnings.warn(f"the stored policy's {wrong}", CkptstoreWarning, stacklevel=1)
        elif args.set_policy and not args.dry_run:
            store.set_retention(policy)
            source = "command line, now stored in the store"
        report = (
            store.gc(policy, dry_run=args.dry_run, grace=grace, wait=args.wait)
            if policy is not None
            else store.prune(dry_run=args.dry_run, grace=grace, wait=args.wait)
        )
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": report.dry_run,
                    "policy": None if policy is None else policy.to_json(),
                    "decisions": []
                    if report.plan is None
                    else [
                        {
                            "id": d.checkpoint.id,
                            "step": d.checkpoint.step,
                            "action": d.action,
                            "reasons": list(d.reasons),
                        }
                        for d in report.plan.decisions
                    ],
                    "removed": [i.id for i in report.removed],
                    "deleted_objects": report.deleted_objects,
                    "freed_bytes": report.freed_bytes,
                    "deleted_temp": report.deleted_temp,
                    "young_objects": report.young_objects,
                    "young_bytes": report.young_bytes,
                    "deferred": report.deferred,
                    "problems": report.problems,
                },
                indent=2,
            )
        )
        return 0 if report.ok else 1
    if policy is None:
        print("no retention policy given or stored: no checkpoint is removed; pruning unreferenced data only")
    else:
        print(f"policy ({source}): {policy.describe()}")
    if report.plan is not None and report.plan.decisions:
        rows = [
            [d.action, str(d.checkpoint.step), when(d.checkpoint), d.checkpoint.short_id, "; ".join(d.reasons)]
            for d in reversed(report.plan.decisions)
        ]
        table(["action", "step", "created (UTC)", "id", "reasons"], rows)
    verb = "would free" if report.dry_run else "freed"
    rm = "would remove" if report.dry_run else "removed"
    print(
        f"{'dry run: ' if report.dry_run else ''}{rm} {len(report.removed)} checkpoint(s); {verb} "
        f"{fmt_bytes(report.freed_bytes)} ({report.freed_bytes} bytes) in {report.deleted_objects} object(s)"
    )
    if report.deleted_temp:
        print(f"{'would delete' if report.dry_run else 'deleted'} {report.deleted_temp} stale temporary file(s)")
    if report.young_objects:
        from ..store._gc import GRACE

        g = format_duration(timedelta(seconds=grace if grace is not None else GRACE))
        print(
            f"kept {report.young_objects} unreferenced object(s) ({fmt_bytes(report.young_bytes)}) younger than "
            f"the grace period ({g}): a save may still be writing them"
        )
    if report.deferred:
        print(f"note: {report.deferred}", file=sys.stderr)
    for p in report.problems:
        print(f"problem: {p}", file=sys.stderr)
    return 0 if report.ok else 1
