"""Watching a local write become durable: the real ``os.fsync``/``os.replace``/``os.mkdir`` run,
and each call is logged with the path it touched, in order (Linux: an fd's path from /proc).

docs/format.md §7 asks of a local writer: bytes fsynced in a temporary file of the destination
folder (``.<name>.tmp-<pid>-<hex>``), renamed over the final name, the folder fsynced after the
rename; a new folder's parent fsynced after it was made. ``durability_problems`` checks a log for
that, whichever writer made it (``Backend.write`` + ``sync`` or the save pipeline's sink).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

import pytest

from ..format._layout import is_temporary


def available() -> bool:
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self/fd")


def temporary_for(name: str) -> re.Pattern[str]:
    """The grammar of a temporary file on the way to ``name`` (docs/format.md §2)."""
    return re.compile(rf"^\.{re.escape(name)}\.tmp-[0-9]+-[0-9a-f]+$")


def final_name(temp_key: str) -> str | None:
    """The key a temporary file is on its way to, or None when ``temp_key`` is not one."""
    folder, _, name = temp_key.rpartition("/")
    m = re.match(r"^\.(.+)\.tmp-[0-9]+-[0-9a-f]+$", name)
    if m is None or not is_temporary(temp_key):
        return None
    return f"{folder}/{m.group(1)}" if folder else m.group(1)


class SyscallLog:
    """The durability-relevant system calls made while it is installed."""

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def add(self, *event: str) -> None:
        with self._lock:
            self.events.append(event)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> SyscallLog:
        real_fsync, real_replace, real_rename, real_mkdir = os.fsync, os.replace, os.rename, os.mkdir

        def fsync(fd: Any) -> None:
            n = fd if isinstance(fd, int) else fd.fileno()
            path = os.path.realpath(os.readlink(f"/proc/self/fd/{n}"))
            real_fsync(fd)
            self.add("fsync", path)

        def replace(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            real_replace(src, dst, *args, **kw)
            self.add("rename", _real(src), _real(dst))

        def rename(src: Any, dst: Any, *args: Any, **kw: Any) -> None:
            real_rename(src, dst, *args, **kw)
            self.add("rename", _real(src), _real(dst))

        def mkdir(path: Any, *args: Any, **kw: Any) -> None:
            real_mkdir(path, *args, **kw)
            self.add("mkdir", _real(path))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "mkdir", mkdir)
        return self


def _real(path: Any) -> str:
    return os.path.realpath(os.fspath(path))


def durability_problems(log: SyscallLog, paths: list[str]) -> list[str]:
    """What in ``log`` breaks the durable-write rules for the files ``paths``."""
    ev = log.events
    out = []
    for p in map(_real, paths):
        folder, name = os.path.split(p)
        renames = [i for i, e in enumerate(ev) if e[0] == "rename" and e[2] == p]
        if not renames:
            out.append(f"{p}: not renamed into place (written in place, or not at all)")
            continue
        i = renames[-1]
        tmp = ev[i][1]
        if os.path.dirname(tmp) != folder or not temporary_for(name).match(os.path.basename(tmp)):
            out.append(f"{p}: renamed from {tmp}, not from .{name}.tmp-<pid>-<hex> in the same folder")
        if ("fsync", tmp) not in ev[:i]:
            out.append(f"{p}: renamed into place before its bytes were fsynced")
        if ("fsync", folder) not in ev[i + 1 :]:
            out.append(f"{p}: its folder was not fsynced after the rename (the name is not durable)")
    for j, e in enumerate(ev):
        if e[0] == "mkdir" and ("fsync", os.path.dirname(e[1])) not in ev[j + 1 :]:
            out.append(f"new folder {e[1]}: its parent was not fsynced after it was made")
    return out
