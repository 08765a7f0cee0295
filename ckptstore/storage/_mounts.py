"""Local paths that are really network mounts (Google Drive in Colab, other FUSE folders).

A FUSE mount looks like a local folder, but its writes reach the cloud later, ``os.link`` may
fail, and the mount can drop: every call then fails with ENOTCONN ("Transport endpoint is not
connected") while ``os.path.exists`` quietly answers False. This module finds the mount a path
lives on and words the errors and notes the store shows for them.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

#: what ``gc`` / ``forget`` should tell users whose store lives on a Google Drive mount
DRIVE_TRASH_NOTE = (
    "this store is on a Google Drive mount: deleted files go to the Drive trash, which still counts "
    "against your Drive quota. Empty the trash (drive.google.com > Trash) to get the space back."
)

#: errno values that mean "the mount is gone", not "the file is missing"
DEAD_MOUNT_ERRNOS = frozenset({errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED})


@dataclass(frozen=True)
class Mount:
    """The mount a path lives on, from ``/proc/self/mounts``."""

    point: str
    fstype: str
    source: str

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith("fuse.")

    @property
    def is_drive(self) -> bool:
        """Google Drive for desktop / Colab's drive mount (``/content/drive``)."""
        if not self.is_fuse:
            return False
        t = self.fstype.lower()
        return "drive" in t or self.point == "/content/drive" or self.point.startswith("/content/drive/")


def _unescape(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def find_mount(path: str, table: str = "/proc/self/mounts") -> Mount | None:
    """The mount that holds ``path`` (longest mount point that is a prefix), or None when the
    mount table cannot be read (not Linux)."""
    try:
        with open(table, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    path = os.path.abspath(path)
    best: Mount | None = None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = _unescape(parts[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best.point)):
            best = Mount(point=point, fstype=parts[2], source=_unescape(parts[0]))
    return best


def is_dead_mount_error(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DEAD_MOUNT_ERRNOS


def dead_mount_message(what: str, path: str, e: OSError) -> str:
    m = find_mount(path)
    where = f"the mount at {m.point} ({m.fstype})" if m is not None else "the mount that holds it"
    advice = (
        "remount it (in Colab: drive.mount('/content/drive', force_remount=True)) and try again"
        if m is None or m.is_drive or path.startswith("/content/drive")
        else "remount it and try again"
    )
    return (
        f"{what}: {where} is disconnected ({e.strerror or e}). Nothing new was committed; "
        f"checkpoints written before the drop may not have reached the cloud yet. To continue, {advice}."
    )
