"""Which manifests this machine has already validated in full: a small cache keyed by content.

A manifest is named by the BLAKE3 of its bytes, so "the bytes with digest D validate" holds for
good, in every store and every process. Once a process has validated a manifest in full (schema,
canonical JSON, the structure checks of format.md §5), or written it itself, it records that
verdict here with what a listing needs besides the header: the header's end offset, the number
of tensors and the stats. A later listing, in any process, still reads each manifest and checks
its hash (so damage is always found), but then parses only the header (``format._header``)
instead of the whole document with its tensor table.

Where: ``$CKPTSTORE_CACHE_DIR`` (empty or ``off``: no cache), else ``$XDG_CACHE_HOME/ckptstore``,
else ``~/.cache/ckptstore``; one small file per manifest, under a folder named after the rules
version (a ckptstore that validates differently never trusts another's verdicts). Nothing here
is on the store, and every failure to read or write the cache only means a full validation.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from .._version import __version__

#: bump when what "validates" means changes without a version change
RULES = f"{__version__}.1"


@dataclass(frozen=True)
class Verdict:
    """A manifest validated in full: where its header ends (0: not canonical, parse it all),
    its tensor count and its stats."""

    header_end: int
    num_tensors: int
    logical_bytes: int
    stored_bytes: int
    new_bytes: int
    new_objects: int


def cache_dir() -> str | None:
    """The folder of this ckptstore's verdicts, or None when caching is off."""
    base = os.environ.get("CKPTSTORE_CACHE_DIR")
    if base is not None:
        if base.strip().lower() in ("", "off", "0", "false", "no"):
            return None
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "ckptstore")
    return os.path.join(base, f"manifests-{RULES}")


def _path(folder: str, digest: str) -> str:
    return os.path.join(folder, digest[:2], digest[2:] + ".json")


def lookup(folder: str | None, digest: str) -> Verdict | None:
    """The verdict recorded for the manifest ``digest``, or None."""
    if folder is None:
        return None
    try:
        with open(_path(folder, digest), "rb") as f:
            doc: Any = json.loads(f.read())
        if doc.get("id") != digest:
            return None
        v = Verdict(*(int(doc[k]) for k in ("end", "tensors", "logical", "stored", "new", "new_objects")))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return v if min(v.header_end, v.num_tensors) >= 0 else None


def record(folder: str | None, digest: str, v: Verdict) -> None:
    """Remember that the manifest ``digest`` validated (best effort, atomic)."""
    if folder is None:
        return
    doc = {
        "id": digest,
        "end": v.header_end,
        "tensors": v.num_tensors,
        "logical": v.logical_bytes,
        "stored": v.stored_bytes,
        "new": v.new_bytes,
        "new_objects": v.new_objects,
    }
    path = _path(folder, digest)
    tmp = f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


_queue: queue.Queue[tuple[str, str, Verdict]] = queue.Queue()
_writer: threading.Thread | None = None
_writer_lock = threading.Lock()


def record_later(folder: str | None, digest: str, v: Verdict) -> None:
    """``record`` on a background thread: a save does not wait for the cache (writing a file
    right after the save's fsyncs can wait on the file system's journal)."""
    global _writer
    if folder is None:
        return
    with _writer_lock:
        if _writer is None:
            _writer = threading.Thread(target=_write_loop, name="ckptstore-verdicts", daemon=True)
            _writer.start()
            atexit.register(_drain)
    _queue.put((folder, digest, v))


def _write_loop() -> None:
    while True:
        item = _queue.get()
        try:
            record(*item)
        finally:
            _queue.task_done()


def _drain() -> None:
    """Return once every queued verdict is written, including one the writer thread is writing
    now (at exit, so that none is lost; tests call it too). Small files, no fsync."""
    if _writer is not None and _writer.is_alive():
        _queue.join()
        return
    while True:  # no writer thread (it never started): write what is queued here
        try:
            item = _queue.get_nowait()
        except queue.Empty:
            return
        record(*item)
        _queue.task_done()
