"""The ``ckptstore`` command line. ``main(argv) -> exit code`` (0 ok, 1 problems, 2 usage).

One module per command group, each with ``add_parsers(sub)``: ``_inspect`` (ls, show, du),
``_verify``, ``_gc`` (gc, forget), ``_cp``, ``_interop`` (import, export), ``_dashboard`` (dashboard, diff).
A new command goes into the module of its group (or a new one) and is registered in ``build_parser``.

What the user sees besides a command's output is one line per message on stderr:
``ckptstore: error: ...`` (exit 1), ``ckptstore: warning: ...`` (ckptstore's warnings and log
records, each text once), or a subcommand's usage (exit 2). Never a traceback for bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .._errors import CkptstoreError
from .._version import __version__
from . import _cp, _dashboard, _gc, _inspect, _interop, _verify

#: exit status of a command whose reader went away (as a tool killed by SIGPIPE)
BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """An unknown flag is reported by the subcommand's parser, with that subcommand's usage."""

    commands: dict[str, argparse.ArgumentParser]

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            parser = getattr(self, "commands", {}).get(getattr(ns, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns


class _Commands:
    """The subparsers action, handed to each group's ``add_parsers``: a command without its own
    description gets its one-line help as the description, so ``ckptstore X --help`` starts with
    the line ``ckptstore --help`` shows for X."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.parsers: dict[str, argparse.ArgumentParser] = {}

    def add_parser(self, name: str, **kw: Any) -> argparse.ArgumentParser:
        text = kw.get("help")
        if text and not kw.get("description"):
            kw["description"] = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
        parser: argparse.ArgumentParser = self.sub.add_parser(name, **kw)
        self.parsers[name] = parser
        return parser


def build_parser() -> _Parser:
    p = _Parser(prog="ckptstore", description="Safe, small, fast PyTorch checkpoints.")
    p.add_argument("--version", action="version", version=f"ckptstore {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    commands = _Commands(sub)
    _inspect.add_parsers(commands)
    _verify.add_parsers(commands)
    _gc.add_parsers(commands)
    _cp.add_parsers(commands)
    _interop.add_parsers(commands)
    _dashboard.add_parsers(commands)
    p.commands = commands.parsers
    return p


#: the loggers whose warnings a command prints as one line each
_LOGGERS = ("ckptstore", "gcsfs", "s3fs", "fsspec")


class _OneLine(logging.Handler):
    """ckptstore's log records at WARNING and above, as the same one line a warning gets."""

    def __init__(self, say: Any) -> None:
        super().__init__(logging.WARNING)
        self.say = say

    def emit(self, record: logging.LogRecord) -> None:
        self.say(record.getMessage())


@contextmanager
def _clean_messages() -> Iterator[None]:
    """Warnings and log records print as ``ckptstore: warning: <text>``, each text once."""
    shown: set[str] = set()

    def say(text: str) -> None:
        text = " ".join(str(text).split())
        if text not in shown:
            shown.add(text)
            print(f"ckptstore: warning: {text}", file=sys.stderr)

    def show(message: Any, category: Any, filename: Any, lineno: Any, file: Any = None, line: Any = None) -> None:
        say(str(message))

    # ckptstore's records, and those of the storage libraries under it (gcsfs says it could not
    # tell a bucket's type, fsspec that a call failed...), which would print raw through Python's
    # last-resort handler
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    handler = _OneLine(say)
    propagate = [lg.propagate for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        for lg in loggers:
            lg.addHandler(handler)
            lg.propagate = False
        try:
            yield
        finally:
            for lg, prop in zip(loggers, propagate):
                lg.removeHandler(handler)
                lg.propagate = prop


def _quiet_stdout() -> None:
    """The reader of stdout is gone: send what is still buffered nowhere, so exit stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


#: how a library message names an argument -> the command-line flag that sets it
_FLAGS = (("raise retries=", "raise --retries", "--retries"), ("retries=N", "--retries N", "--retries"))


def _in_cli_words(message: str, parser: argparse.ArgumentParser | None) -> str:
    """A library message with its argument names replaced by this command's flags."""
    if parser is None:
        return message
    usage = parser.format_usage()
    for api, cli, flag in _FLAGS:
        if f"[{flag}" in usage:
            message = message.replace(api, cli)
    return message


def run() -> int:
    """The ``ckptstore`` program (console script and ``python -m ckptstore``): ``main`` in a
    process of its own. pydantic looks for plugins by scanning every installed package's entry
    points the first time it builds a model (tens of milliseconds in a large environment);
    plugins observe an application's validation, and this program has none to observe, so the
    scan is skipped unless the environment says otherwise."""
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) if isinstance(e.code, int) else 2
    try:
        with _clean_messages():
            code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return BROKEN_PIPE
    except (CkptstoreError, OSError) as e:
        print(f"ckptstore: error: {_in_cli_words(str(e), parser.commands.get(args.command))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("ckptstore: interrupted", file=sys.stderr)
        return 130
