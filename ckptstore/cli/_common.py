"""What every command shares: the store argument and its options, opening the store, tables."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..format._info import CheckpointInfo
    from ..store._store import Store


def add_store_arg(sp: argparse.ArgumentParser) -> None:
    """The positional store URI and ``-o KEY=VALUE`` storage options."""
    sp.add_argument("uri", help="store location: a path, file://, memory://, s3://, gs://, ...")
    sp.add_argument(
        "-o",
        "--storage-option",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="fsspec storage option (value parsed as JSON when it can be); repeatable",
    )
    add_retries_arg(sp)


def add_retries_arg(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--retries", type=int, metavar="N", help="retries per storage request (default 3)")


def usage(command: str, message: str) -> int:
    """Say a usage error of ``ckptstore COMMAND`` the way argparse does; the exit code (2)."""
    print(f"ckptstore {command}: error: {message}", file=sys.stderr)
    return 2


def key_value(text: str) -> str:
    """An argparse type: ``KEY=VALUE`` (a usage error, exit 2, without the ``=``)."""
    key, sep, _value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. -o anon=true, not {text!r}")
    return text


def storage_options(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` items as fsspec storage options (a value is JSON when it parses)."""
    opts: dict[str, Any] = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise ValueError(f"a storage option is KEY=VALUE, not {item!r}")
        try:
            opts[k] = json.loads(v)
        except ValueError:
            opts[k] = v
    return opts


def open_store(args: argparse.Namespace) -> Store:
    from ..store._store import Store

    return Store(args.uri, storage_options=storage_options(args.storage_option), retries=args.retries)


def table(head: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    for r in [head, *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(r, widths)).rstrip())


def when(i: CheckpointInfo) -> str:
    return i.created_at.strftime("%Y-%m-%d %H:%M:%S")


def progress_text(meta: Any, step: int) -> str:
    """``"1500/10000 (15.0%)"`` when the checkpoint's meta has ``total_steps``, else ``""``."""
    total = meta.get("total_steps") if isinstance(meta, dict) else None
    if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
        return ""
    return f"{step}/{total} ({100.0 * step / total:.1f}%)"


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)
