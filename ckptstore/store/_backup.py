"""Backup mirrors: every committed checkpoint is copied in the background to a second store.

``Store(uri, backup="gs://b/run")`` or ``backup=Backup(uri, keep_last=3, ...)`` starts a
:class:`Mirror` with one daemon thread. ``Store.save`` only hands it the new checkpoint's
record and returns; the thread copies (deduplicated, verified, manifest last: ``_copy.py``), then
applies the mirror's own retention. A failing mirror never blocks or breaks training: the error
is logged and warned about once per failure streak, the checkpoint stays pending, and the copy is
tried again after ``retry_interval`` seconds or at the next commit, whichever comes first.
``Store.close()`` (and interpreter exit) waits for the copies still pending, trying once more.

When the primary store is gone (a Colab VM that was reset: the local disk is empty, the Drive
copy is not), the first read of a ``Store`` with a backup restores the backup's newest
checkpoints into the primary, and module-level ``ckptstore.load(uri, fallback=...)`` reads from
the fallback store directly.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import BackupWarning, CkptstoreError
from ._retention import Retention

if TYPE_CHECKING:
    from ..format._info import CheckpointInfo
    from ._store import Store

log = logging.getLogger("ckptstore")


@dataclass(frozen=True)
class Backup:
    """Where and how a store mirrors its checkpoints.

    - ``uri``/``storage_options``/``retries``: the mirror's location, as for ``Store``.
    - ``keep_last``: keep only the newest N checkpoints on the mirror (None: keep all). A
      ``retention`` policy object (``ckptstore.Retention``) may be given instead, applied with
      the mirror store's ``gc``.
    - ``retry_interval``: seconds before a failed copy is tried again.
    - ``restore``: how many of the mirror's newest checkpoints to restore into an empty primary
      on its first read (0: never).
    - ``close_timeout``: how long ``Store.close()`` waits for pending copies (None: until done).
    """

    uri: str
    keep_last: int | None = None
    retention: Any = None
    storage_options: Mapping[str, Any] | None = None
    retries: int | None = None
    retry_interval: float = 60.0
    restore: int = 1
    readback: bool = False
    workers: int | None = None
    close_timeout: float | None = None

    def __post_init__(self) -> None:
        import os

        if isinstance(self.uri, os.PathLike):
            object.__setattr__(self, "uri", os.fspath(self.uri))
        if not isinstance(self.uri, str) or not self.uri:
            raise TypeError(f"Backup needs a URI, not {self.uri!r}")
        if self.keep_last is not None and (
            isinstance(self.keep_last, bool) or not isinstance(self.keep_last, int) or self.keep_last < 1
        ):
            raise ValueError(f"keep_last must be a positive int or None, not {self.keep_last!r}")
        if self.retry_interval < 0:
            raise ValueError("retry_interval must be >= 0")


def as_backup(backup: Any) -> Backup | None:
    if backup is None or isinstance(backup, Backup):
        return backup
    import os

    if isinstance(backup, (str, os.PathLike)):
        return Backup(os.fspath(backup))
    raise TypeError(f"backup must be a URI or a ckptstore.Backup, not {type(backup).__name__}")


@dataclass
class MirrorStatus:
    """Where a mirror stands: ids still to copy, the last error (None after a success)."""

    pending: tuple[str, ...]
    copied: int
    last_error: str | None
    last_success: float | None = None
    failures: int = 0


_LIVE: weakref.WeakSet[Mirror] = weakref.WeakSet()


def _close_all_at_exit() -> None:
    for m in list(_LIVE):
        m.close()


atexit.register(_close_all_at_exit)


class Mirror:
    """The background copier of one primary store to its backup."""

    def __init__(self, primary: Store, backup: Backup) -> None:
        self.primary = primary
        self.primary_uri = primary.uri
        self.backup = backup
        self._cond = threading.Condition()
        self._pending: dict[str, CheckpointInfo] = {}
        self._closing = False
        self._next_attempt = 0.0
        self._store: Store | None = None
        self._copied = 0
        self._failures = 0
        self._last_error: str | None = None
        self._last_success: float | None = None
        self._thread: threading.Thread | None = None
        self._gen = 0
        self._noted = False
        self._attempts_started = 0
        self._attempts_done = 0
        _LIVE.add(self)

    # -- the training thread's side ------------------------------------------------------------
    def submit(self, info: CheckpointInfo) -> None:
        """Queue a committed checkpoint; returns at once."""
        with self._cond:
            self._pending[info.id] = info
            self._next_attempt = 0.0  # a new commit is a good moment to retry too
            if self._closing or self._thread is None or not self._thread.is_alive():
                self._closing = False
                self._gen += 1
                self._thread = threading.Thread(
                    target=self._run, args=(self._gen,), name="ckptstore-backup", daemon=True
                )
                self._thread.start()
                _LIVE.add(self)
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Try the pending copies now and wait for the attempt; True when nothing is pending."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            if not self._pending:
                return True
            self._next_attempt = 0.0
            self._cond.notify_all()
            mark = self._attempts_started + 1  # an attempt that starts after this call
            while self._pending and self._attempts_done < mark:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if self._thread is None or not self._thread.is_alive():
                    break
                self._cond.wait(left)
            return not self._pending

    def close(self, timeout: float | None = None) -> None:
        """One last attempt for what is pending (waiting up to ``timeout``, default the
        backup's ``close_timeout``), then stop the thread. A later ``submit`` starts it again."""
        if self._closing or self._thread is None:
            return
        ok = self.flush(self.backup.close_timeout if timeout is None else timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            pending = list(self._pending.values())
        if not ok and pending:
            steps = ", ".join(str(i.step) for i in pending)
            msg = (
                f"backup to {self.backup.uri} is incomplete: step(s) {steps} were not copied "
                f"({self._last_error or 'still in progress'}). Copy them later with "
                f"`ckptstore cp {self.primary_uri} {self.backup.uri} --all`."
            )
            log.warning(msg)
            warnings.warn(msg, BackupWarning, stacklevel=2)
        _LIVE.discard(self)

    @property
    def status(self) -> MirrorStatus:
        with self._cond:
            return MirrorStatus(
                pending=tuple(i.id for i in self._pending.values()),
                copied=self._copied,
                last_error=self._last_error,
                last_success=self._last_success,
                failures=self._failures,
            )

    # -- the mirror thread -------------------------------------------------------------------
    def _run(self, gen: int) -> None:
        while True:
            with self._cond:
                while (
                    gen == self._gen
                    and not self._closing
                    and (not self._pending or time.monotonic() < self._next_attempt)
                ):
                    wait = None if not self._pending else max(0.0, self._next_attempt - time.monotonic())
                    self._cond.wait(wait)
                if self._closing or gen != self._gen:
                    return
                batch = list(self._pending.values())
                self._attempts_started += 1
            copied = 0
            try:
                copied = self._attempt(batch)
                err: BaseException | None = None
            except BaseException as e:  # noqa: BLE001 - never let the thread die silently; reported below
                err = e
            with self._cond:
                if err is None:
                    for i in batch:
                        self._pending.pop(i.id, None)
                    self._copied += copied
                    self._last_success = time.time()
                    recovered, self._failures = self._failures, 0
                    self._last_error = None
                else:
                    recovered = 0
                    self._failures += 1
                    self._last_error = f"{type(err).__name__}: {err}"
                    self._next_attempt = time.monotonic() + self.backup.retry_interval
                first_failure = self._failures == 1
            if err is not None:  # reported outside the lock, before flush() sees the attempt end
                self._report(err, first_failure)
            elif recovered:
                log.warning("backup to %s works again; %d checkpoint(s) caught up", self.backup.uri, copied)
            with self._cond:
                self._attempts_done += 1
                self._cond.notify_all()

    def _report(self, err: BaseException, first: bool) -> None:
        msg = (
            f"backup to {self.backup.uri} failed ({type(err).__name__}: {err}); training goes on, "
            f"the copy is retried in {self.backup.retry_interval:g} s or after the next save"
        )
        log.warning(msg)
        if first:  # once per failure streak
            warnings.warn(msg, BackupWarning, stacklevel=2)

    def _mirror_store(self) -> Store:
        if self._store is None:
            b = self.backup
            self._store = type(self.primary)(
                b.uri, storage_options=b.storage_options, retries=b.retries, workers=b.workers
            )
        return self._store

    def _attempt(self, batch: list[CheckpointInfo]) -> int:
        primary = self.primary
        live = {i.id for i in primary.list()}
        todo = [i for i in batch if i.id in live]  # forgotten by the primary's retention: skip
        if self.backup.keep_last is not None:
            todo = sorted(todo, key=lambda i: (i.step, i.created_at, i.id))[-self.backup.keep_last :]
        mirror = self._mirror_store()
        try:
            copied = 0
            if todo:
                copied = len(
                    primary.copy_to(
                        mirror,
                        checkpoints=todo,
                        readback=self.backup.readback,
                        workers=self.backup.workers,
                        progress=False,
                    ).copied
                )
            dropped = apply_retention(mirror, self.backup)
        except BaseException:
            self._store = None  # reopen next time (credentials, mounts)
            raise
        note = mirror.backend.delete_note() if dropped else None
        if note and not self._noted:
            self._noted = True
            log.warning("backup %s: %s", self.backup.uri, note)
            warnings.warn(f"backup {self.backup.uri}: {note}", BackupWarning, stacklevel=2)
        return copied

    # -- restore ----------------------------------------------------------------------------
    def restore_into(self, primary: Store) -> list[CheckpointInfo]:
        """Copy the mirror's newest ``backup.restore`` checkpoints into an empty primary."""
        n = self.backup.restore
        if n <= 0:
            return []
        try:
            mirror = self._mirror_store()
            if not mirror.exists() or not mirror.list():
                return []
            result = mirror.copy_to(primary, latest=n, readback=self.backup.readback, progress=None)
        except CkptstoreError as e:
            msg = f"the store {primary.uri} is empty and restoring from the backup {self.backup.uri} failed: {e}"
            log.warning(msg)
            warnings.warn(msg, BackupWarning, stacklevel=4)
            return []
        restored = list(result.copied) + list(result.present)
        if restored:
            steps = ", ".join(str(i.step) for i in restored)
            msg = (
                f"the store {primary.uri} had no checkpoints; restored step(s) {steps} from the backup "
                f"{self.backup.uri}"
            )
            log.warning(msg)
            warnings.warn(msg, BackupWarning, stacklevel=4)
        return restored


def apply_retention(mirror: Store, backup: Backup) -> list[CheckpointInfo]:
    """The mirror's own retention: ``backup.retention``, else keep the newest ``keep_last``,
    applied with the mirror store's ``gc`` (forget, then delete unreferenced objects). Returns
    what was forgotten."""
    policy = backup.retention
    if policy is None and backup.keep_last is not None:
        policy = Retention(keep_last=backup.keep_last)
    if policy is None:
        return []
    before = {i.id: i for i in mirror.list()}
    mirror.gc(policy)
    after = {i.id for i in mirror.list()}
    return [i for k, i in before.items() if k not in after]
