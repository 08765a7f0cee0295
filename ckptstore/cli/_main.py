"""The ``ckptstore`` command line. ``main(argv) -> exit code`` (0 ok, 1 problems, 2 usage).

One module per command group, each with ``add_parsers(sub)``: ``_inspect`` (ls, show, du),
``_verify``, ``_gc``, ``_cp``, ``_interop`` (import, export), ``_dashboard`` (dashboard, diff).
A new command goes into the module of its group (or a new one) and is registered in ``build_parser``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._errors import CkptstoreError
from .._version import __version__
from . import _cp, _dashboard, _gc, _inspect, _interop, _verify


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ckptstore", description="Safe, small, fast PyTorch checkpoints.")
    p.add_argument("--version", action="version", version=f"ckptstore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _inspect.add_parsers(sub)
    _verify.add_parsers(sub)
    _gc.add_parsers(sub)
    _cp.add_parsers(sub)
    _interop.add_parsers(sub)
    _dashboard.add_parsers(sub)
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
