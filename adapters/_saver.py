"""Writing states to a store: now, or in the background from host staging buffers.

``Saver.save`` in synchronous mode calls ``Store.save`` and returns when the checkpoint is
committed. In asynchronous mode it waits for the previous save (at most one in flight),
snapshots the state into :class:`~._staging.StagingBuffers` and hands the write to a
:class:`~._background.BackgroundJob`; the job's error is raised by the next call. Retention
(``keep=``) goes with every save, so the store applies it only after the commit. At
interpreter exit a save still in flight is waited for, unless the user aborted (Ctrl+C twice).
"""

from __future__ import annotations

import atexit
import weakref
from typing import Any, Callable

import torch

import ckptstore
from ckptstore import CheckpointInfo, Store

from ._background import BackgroundJob
from ._signals import say
from ._staging import StagingBuffers, tensor_bytes

__all__ = ["Saver", "build_retention"]


def build_retention(keep_last: int | None, keep_best: tuple[Any, ...] | None) -> ckptstore.Retention | None:
    """A ``ckptstore.Retention`` for the options given, or None when none was given."""
    if keep_last is None and keep_best is None:
        return None
    kw: dict[str, Any] = {}
    if keep_last is not None:
        kw["keep_last"] = keep_last
    if keep_best is not None:
        kw["keep_best"] = keep_best
    return ckptstore.Retention(**kw)


class Saver:
    """See the module docstring. ``retention`` is the policy passed as ``keep=`` with every save."""

    def __init__(self, store: Store, *, async_save: bool, retention: Any = None, dist: Any = None) -> None:
        self.store = store
        self.dist = dist  # a _loop_dist.DistSync under torch.distributed: saves go through DCP
        self.async_save = async_save
        self._retention = retention
        self.job = BackgroundJob()
        self.staging = StagingBuffers() if async_save else None
        self._snap: Any = None
        self.aborted: Callable[[], bool] = lambda: False
        self._atexit = _register_atexit(self)

    @property
    def busy(self) -> bool:
        return self.job.busy

    def reserve(self, state: Any) -> None:
        """Start allocating the staging memory ``state`` needs (async mode; in the background)."""
        if self.staging is not None:
            nbytes, cuda = tensor_bytes(state)
            self.staging.reserve(nbytes, cuda=cuda)

    def barrier(self) -> None:
        """Called before an optimizer step: later writes wait for the deferred copies."""
        snap = self._snap
        if snap is not None:
            snap.barrier()

    def save(
        self,
        state: Any,
        *,
        on_commit: Callable[[CheckpointInfo], None],
        on_fail: Callable[[], None],
        defer: Callable[[torch.Tensor], bool] | None = None,
        **kw: Any,
    ) -> None:
        """Save ``state`` with ``Store.save(**kw)``; ``on_commit(info)`` runs once it is committed,
        ``on_fail()`` if it is not (in the background in async mode)."""
        if self._retention is not None:
            kw["keep"] = self._retention
        kw.setdefault("progress", False)
        if self.staging is None:
            try:
                info = self._write(state, kw)
            except BaseException:
                on_fail()
                raise
            on_commit(info)
            return
        self.job.wait()  # at most one save in flight; raises the previous one's error
        snap = self.staging.snapshot(state, defer=defer)
        self._snap = snap

        def write() -> None:
            try:
                snap.wait()
                on_commit(self._write(snap.tree, kw))
            except BaseException:
                on_fail()
                raise
            finally:
                if self._snap is snap:
                    self._snap = None
                snap.release()

        self.job.submit(write)

    def _write(self, state: Any, kw: dict[str, Any]) -> CheckpointInfo:
        """One save: ``Store.save``, or through DCP on every rank under torch.distributed."""
        return self.store.save(state, **kw) if self.dist is None else self.dist.save(self.store, state, **kw)

    def wait(self) -> None:
        self.job.wait()

    def raise_error(self) -> None:
        if not self.job.busy:
            self.job.raise_error()

    @property
    def failed(self) -> bool:
        return self.job.failed

    def close(self, *, wait: bool = True) -> None:
        try:
            if wait:
                self.job.wait()
        finally:
            if self.staging is not None and not self.job.busy:
                self.staging.close()
            atexit.unregister(self._atexit)


def _register_atexit(saver: Saver) -> Callable[[], None]:
    ref = weakref.ref(saver)

    def at_exit() -> None:
        me = ref()
        if me is not None and me.job.busy and not me.aborted():
            try:
                me.job.wait()
            except Exception as e:  # noqa: BLE001 - the interpreter is exiting; say what failed
                say(f"ckptstore: the last background save failed: {e}\n")

    atexit.register(at_exit)
    return at_exit
