"""Checkpointing for a hand-written PyTorch training loop.

>>> from ckptstore.adapters.loop import Checkpointer
>>> ckpt = Checkpointer("runs/exp1", every_steps=500, every_seconds=1800, keep_last=5,
...                     keep_best=("val_loss", "min"), async_save=True, total_steps=total)  # doctest: +SKIP
>>> start = ckpt.resume(model=model, optimizer=opt, scheduler=sched)     # 0 when nothing to resume
>>> for step in range(start, total):                                      # doctest: +SKIP
...     loss = train_one_step()
...     ckpt.step(step, metrics={"loss": loss})
>>> ckpt.close()                                                          # doctest: +SKIP

Step numbers count completed optimizer steps: ``ckpt.step(i)`` is called after loop index ``i``
(0-based) finished, so that state is checkpoint "step i+1", and :meth:`Checkpointer.resume`
returns the index to continue from. See docs/adapters.md.
"""

from __future__ import annotations

import logging
import math
import os
import time
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import ckptstore
from ckptstore import CheckpointInfo, Store, import_torch_file

from . import _loop_dist
from ._drift import ConfigDrift, ConfigDriftWarning, config_drift, plain_config
from ._loop_dist import PeerSaveError
from ._options import keep_best_option, metric_values, positive
from ._resume import DamagedCheckpoint, Resumable, ResumeFallbackWarning, find_resumable, restore_into
from ._saver import Saver, build_retention
from ._signals import DEFAULT_SIGNALS, SignalCatcher, say
from ._staging import storage_key
from ._warn import warn

__all__ = [
    "Checkpointer",
    "ConfigDrift",
    "ConfigDriftWarning",
    "DamagedCheckpoint",
    "PeerSaveError",
    "Resumable",
    "ResumeFallbackWarning",
    "ResumeInfo",
    "find_resumable",
    "import_torch_file",
]

log = logging.getLogger("ckptstore.loop")
_RESERVED = frozenset({"extra"})


@dataclass(frozen=True)
class ResumeInfo:
    """What :meth:`Checkpointer.resume` restored."""

    info: CheckpointInfo
    step: int
    """Completed steps in the checkpoint; the loop index to continue from."""
    epoch: int | None
    next_epoch: int
    """The epoch to continue with: ``epoch + 1`` when the checkpoint was written at an epoch's end."""
    restored: tuple[str, ...]
    missing: tuple[str, ...]
    """Objects passed to resume() that the checkpoint has no state for (they start fresh)."""
    skipped: tuple[DamagedCheckpoint, ...]
    """Newer checkpoints passed over because they did not verify."""
    drift: ConfigDrift | None
    rng_skipped: tuple[str, ...]
    extra: Any = field(default=None, repr=False)
    state: Any = field(default=None, repr=False)


class Checkpointer:
    """Saves a training loop's state into a store on triggers, resumes it, survives signals.

    Triggers (any of them; one step is never saved twice): ``every_steps`` completed steps,
    ``every_seconds`` of wall time since the last save, the end of an epoch
    (``on_epoch_end`` with :meth:`epoch_end`), a new best ``keep_best`` metric (only with
    ``save_best=True``: a per-step metric improves often),
    reaching ``total_steps``, on demand (:meth:`save`, ``step(..., save=True)``), and at
    :meth:`close` (``save_on_close``). SIGTERM, SIGINT and SIGUSR1 (``signals``) save at the next
    :meth:`step` and then exit with status 128+signal (``exit_on_signal``) or set
    :attr:`stop_requested`. With ``async_save`` a save copies the state into reusable host
    buffers and returns; the store writes it on a background thread (one save at a time; its
    errors are raised by the next call). Retention (``keep_last``, ``keep_best`` or a
    ``ckptstore.Retention``) is applied by the store after each checkpoint commits. Under
    torchrun (a process group of several ranks) every rank calls it and the ranks save, stop and
    resume as one (``distributed=None`` detects it; ``False`` saves from this process alone);
    see docs/distributed.md.
    """

    def __init__(
        self,
        uri: str | os.PathLike[str] | Store,
        *,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        on_epoch_end: bool = False,
        total_steps: int | None = None,
        keep_last: int | None = None,
        keep_best: tuple[Any, ...] | str | None = None,
        retention: Any = None,
        save_best: bool = False,
        async_save: bool = False,
        overlap_copy: bool = False,
        config: Any = None,
        config_drift: str = "warn",
        risky_keys: Iterable[str] = (),
        signals: Iterable[Any] = DEFAULT_SIGNALS,
        exit_on_signal: bool = True,
        save_on_close: bool = True,
        map_location: Any = "auto",
        restore_rng: bool = True,
        tags: Iterable[str] = (),
        compression: str | bool | None = None,
        allow_pickle: bool = False,
        storage_options: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        distributed: bool | None = None,
    ) -> None:
        self.every_steps = positive("every_steps", every_steps)
        self.every_seconds = positive("every_seconds", every_seconds, float)
        self.total_steps = positive("total_steps", total_steps)
        self.on_epoch_end = bool(on_epoch_end)
        self.keep_last = positive("keep_last", keep_last)
        self.keep_best = keep_best_option(keep_best)
        self.save_best = bool(save_best) and self.keep_best is not None
        if config_drift not in ("warn", "raise", "ignore"):
            raise ValueError(f"config_drift must be 'warn', 'raise' or 'ignore', not {config_drift!r}")
        self.config_drift, self.risky_keys = config_drift, tuple(risky_keys)
        self.config = plain_config(config) if config is not None else None
        self.async_save, self.overlap_copy = bool(async_save), bool(overlap_copy and async_save)
        self.exit_on_signal, self.save_on_close = bool(exit_on_signal), bool(save_on_close)
        self.map_location, self.restore_rng, self.allow_pickle = map_location, bool(restore_rng), allow_pickle
        self.tags = (tags,) if isinstance(tags, str) else tuple(tags)
        self._clock = clock
        self._owns_store = not isinstance(uri, Store)
        self.store: Store = (
            uri if isinstance(uri, Store) else Store(uri, compression=compression, storage_options=storage_options)
        )
        self._signals = SignalCatcher(signals)
        self._signal_handled = False
        self.stop_requested = False
        if retention is None:
            retention = build_retention(self.keep_last, self.keep_best)
        # under torchrun every rank calls the Checkpointer and they save as one (None: when a process
        # group of several ranks is initialized); False: this process saves alone (e.g. rank 0 only)
        use_dist = _loop_dist.active() if distributed is None else bool(distributed)
        self._dist = _loop_dist.DistSync() if use_dist else None
        self._saver = Saver(self.store, async_save=self.async_save, retention=retention, dist=self._dist)
        self._saver.aborted = lambda: self._signals.aborted
        self._hooks: dict[int, Any] = {}
        self._objects: dict[str, Any] = {}
        self._extra: Any = None
        self._completed: int | None = None
        self._epoch: int | None = None
        self._epoch_done = False
        self._requested: set[int] = set()  # steps saved or being saved: never twice
        self._last_saved: CheckpointInfo | None = None
        self._best_value: float | None = None
        self._best_seen = False  # keep_best's metric reached step() or epoch_end() at least once
        self._said: set[str] = set()  # one-time warnings already given
        self._best: CheckpointInfo | None = None
        self._last_save_time = clock()
        self._started = time.monotonic()
        self._seconds_before = 0.0
        self.resumed: ResumeInfo | None = None
        self._closed = False
        self._reserved = False

    # -- properties ---------------------------------------------------------------------
    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def start_step(self) -> int:
        return self.resumed.step if self.resumed is not None else 0

    @property
    def start_epoch(self) -> int:
        return self.resumed.next_epoch if self.resumed is not None else 0

    @property
    def last_saved(self) -> CheckpointInfo | None:
        """The newest checkpoint this checkpointer committed (or resumed from)."""
        return self._last_saved

    @property
    def best(self) -> CheckpointInfo | None:
        """The committed checkpoint with the best ``keep_best`` metric so far."""
        return self._best

    @property
    def saving(self) -> bool:
        """True while a background save is in flight."""
        return self._saver.busy

    def __repr__(self) -> str:
        return f"Checkpointer({self.uri!r}, every_steps={self.every_steps}, async_save={self.async_save})"

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(final=exc_type is None)

    def __del__(self) -> None:  # a Checkpointer dropped without close(): give the signals back
        try:
            if not getattr(self, "_closed", True):
                self._signals.restore()
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    # -- tracking -------------------------------------------------------------------------
    def _track(self, objects: Mapping[str, Any], extra: Any) -> None:
        if self._closed:
            raise RuntimeError("this Checkpointer is closed")
        for name, obj in objects.items():
            if name in _RESERVED:
                raise ValueError(f"{name!r} is reserved; pass plain values as extra=")
            for o in obj if isinstance(obj, (list, tuple)) else [obj]:
                if o is not None and not (
                    callable(getattr(o, "state_dict", None)) and callable(getattr(o, "load_state_dict", None))
                ):
                    raise TypeError(
                        f"{name}: {type(o).__name__} has no state_dict()/load_state_dict(); "
                        "put plain values (counters, histories) in extra= instead"
                    )
            self._objects[name] = obj
            if self.overlap_copy:
                for o in obj if isinstance(obj, (list, tuple)) else [obj]:
                    self._hook(o)
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise TypeError(f"extra must be a dict, not {type(extra).__name__}")
            self._extra = extra

    def _hook(self, opt: Any) -> None:
        if id(opt) in self._hooks or not callable(getattr(opt, "register_step_pre_hook", None)):
            return
        ref = weakref.ref(self)

        def before_step(*_: Any) -> None:
            me = ref()
            if me is not None:
                me._saver.barrier()

        self._hooks[id(opt)] = (opt, opt.register_step_pre_hook(before_step))

    def _gather(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        for name, obj in self._objects.items():
            if obj is None:
                continue
            state[name] = [o.state_dict() for o in obj] if isinstance(obj, (list, tuple)) else obj.state_dict()
        if self._extra is not None:
            state["extra"] = self._extra
        return state

    def _deferrable(self) -> Callable[[torch.Tensor], bool] | None:
        if not self.overlap_copy or not self._hooks:
            return None
        keys: set[tuple[str, int]] = set()
        for opt, _ in self._hooks.values():
            for group in getattr(opt, "param_groups", []):
                keys.update(storage_key(p) for p in group["params"])
            for st in getattr(opt, "state", {}).values():
                if isinstance(st, Mapping):
                    keys.update(storage_key(v) for v in st.values() if isinstance(v, torch.Tensor))
        return lambda t: storage_key(t) in keys

    # -- resume -------------------------------------------------------------------------
    def _location(self) -> Any:
        if self.map_location != "auto":
            return self.map_location
        for obj in self._objects.values():
            for o in obj if isinstance(obj, (list, tuple)) else [obj]:
                if isinstance(o, torch.nn.Module):
                    p = next(iter(o.parameters()), None)
                    if p is not None and p.device.type != "meta":
                        return p.device
        return "auto"

    def resume(
        self, *, step: int | None = None, id: str | None = None, extra: dict[str, Any] | None = None, **objects: Any
    ) -> int:
        """Restore the newest checkpoint that verifies (or the one at ``step`` / ``id``) into
        ``objects`` (``model=``, ``optimizer=``, ``scheduler=``, ``scaler=``... anything with
        ``load_state_dict``; a list for several) and ``extra`` (a dict, updated in place), and
        the RNG states. Returns the step to continue from: 0 when there is nothing to resume.
        Details are in :attr:`resumed`."""
        self._check()
        self._track(objects, extra)
        if self._dist is not None:
            found = self._dist.resume(self.store, self._objects, self._extra, step=step, id=id)
        else:
            found = find_resumable(
                self.store, step=step, id=id, map_location=self._location(), allow_pickle=self.allow_pickle
            )
        if found is None:
            log.info("ckptstore: nothing to resume in %s; starting at step 0", self.uri)
            return 0
        info, state = found.info, found.state
        restored, missing, rng_skipped = restore_into(
            found, self._objects, self._extra, rng=self.restore_rng and self._dist is None, uri=self.uri
        )
        if self._dist is not None and self.restore_rng:  # each rank its own states
            rng_skipped = self._dist.restore_rng(self.store, info)
        saved_extra = state.get("extra")
        drift = self._check_drift(info)
        meta = info.meta or {}
        epoch_done = bool(meta.get("epoch_done", False))
        next_epoch = (info.epoch + 1 if epoch_done else info.epoch) if info.epoch is not None else 0
        self._completed = info.step
        self._requested.add(info.step)
        self._epoch, self._epoch_done = info.epoch, epoch_done
        self._last_saved = info
        self._seconds_before = float(meta.get("train_seconds", 0.0) or 0.0)
        self._init_best()
        self._last_save_time = self._clock()
        self.resumed = ResumeInfo(
            info=info,
            step=info.step,
            epoch=info.epoch,
            next_epoch=next_epoch,
            restored=tuple(restored),
            missing=tuple(missing),
            skipped=found.skipped,
            drift=drift,
            rng_skipped=tuple(rng_skipped),
            extra=saved_extra,
            state=state,
        )
        log.info("ckptstore: resumed from step %d (%s) in %s", info.step, info.short_id, self.uri)
        return info.step

    def _check_drift(self, info: CheckpointInfo) -> ConfigDrift | None:
        if self.config is None or info.config is None or self.config_drift == "ignore":
            return None
        drift = config_drift(info.config, self.config, risky=self.risky_keys)
        if drift:
            msg = f"ckptstore: the config changed since checkpoint step {info.step}: {drift.describe()}"
            if self.config_drift == "raise" and drift.risky:
                raise ValueError(msg + ". Pass config_drift='warn' to resume anyway.")
            warn(msg, ConfigDriftWarning)
        return drift

    def _init_best(self) -> None:
        if self.keep_best is None:
            return
        metric = self.keep_best[0]
        for i in self.store.list():
            v = i.metrics.get(metric)
            if v is not None and not math.isnan(v) and self._better(v):
                self._best_value, self._best = v, i

    def _better(self, v: float) -> bool:
        if self.keep_best is None or math.isnan(v):
            return False
        if self._best_value is None:
            return True
        return v < self._best_value if self.keep_best[1] == "min" else v > self._best_value

    # -- the loop -----------------------------------------------------------------------
    def step(
        self,
        step: int,
        *,
        epoch: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        save: bool = False,
        extra: dict[str, Any] | None = None,
        **objects: Any,
    ) -> bool:
        """Call after loop index ``step`` (0-based) finished. Saves checkpoint ``step + 1`` when a
        trigger fires; True when a save was made (or started, with ``async_save``)."""
        self._check(agreed=True)
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int (the loop index), not {step!r}")
        self._track(objects, extra)
        self._signals.install()
        if epoch is not None and epoch != self._epoch:
            self._epoch, self._epoch_done = epoch, False
        self._completed = done = step + 1
        if self.total_steps is not None and done > self.total_steps and "past_total" not in self._said:
            self._said.add("past_total")
            warn(
                f"ckptstore: step({step}) is past total_steps={self.total_steps}: step() takes the 0-based loop "
                f"index, so this is checkpoint {done} of {self.total_steps}. Pass the index from "
                "range(start, total_steps), or a larger total_steps."
            )
        self._saw_metrics(metrics)
        if self.async_save and not self._reserved and self._objects:
            self._reserved = True
            self._saver.reserve(self._gather())
        triggers = []
        if save:
            triggers.append("manual")
        if self.every_steps and done % self.every_steps == 0:
            triggers.append("every_steps")
        if self.every_seconds and self._clock() - self._last_save_time >= self.every_seconds:
            triggers.append("every_seconds")
        if self.total_steps is not None and done == self.total_steps:
            triggers.append("final")
        values = None
        if self.save_best and metrics and self.keep_best and self.keep_best[0] in metrics:
            values = metric_values(metrics)
            if self._better(values[self.keep_best[0]]):
                triggers.append("best")
        sig = self._signals.received if not self._signal_handled else None
        if sig is not None:
            triggers.append(f"signal:{sig.name}")
        if self._dist is not None:  # every rank saves at the same steps, and stops on any rank's signal
            triggers, sig = self._dist.agree(triggers, None if self._signal_handled else sig, self._saver)
        saved = False
        if triggers and done not in self._requested:
            self._save(done, triggers, metrics if values is None else values)  # raises when given nothing
            saved = True
        if sig is not None:
            self._on_signal(sig)
        return saved

    def epoch_end(
        self,
        epoch: int,
        *,
        metrics: Mapping[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        **objects: Any,
    ) -> bool:
        """Call after the last step of ``epoch``. Saves (with ``on_epoch_end``) unless that step
        was saved already; a resume from this checkpoint continues with ``epoch + 1``."""
        self._check(agreed=True)
        self._track(objects, extra)
        self._epoch, self._epoch_done = epoch, True
        self._saw_metrics(metrics)
        self._warn_best_unseen()
        if self._completed is None:
            raise RuntimeError("call step() after each step before epoch_end(), so the step is known")
        triggers = ["epoch_end"] if self.on_epoch_end else []
        values = metric_values(metrics) if metrics else None
        if (
            values
            and self.save_best
            and self.keep_best
            and self.keep_best[0] in values
            and self._better(values[self.keep_best[0]])
        ):
            triggers.append("best")
        if self._dist is not None:
            triggers, _ = self._dist.agree(triggers, None, self._saver)
        if triggers and self._completed not in self._requested:
            self._save(self._completed, triggers, values)
            return True
        return False

    def save(
        self,
        *,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        wait: bool = False,
        extra: dict[str, Any] | None = None,
        **objects: Any,
    ) -> bool:
        """Save now (``step``: completed steps; default the last seen). Returns False when that
        step is already saved. ``wait=True`` returns only once it is committed."""
        self._check()
        self._track(objects, extra)
        done = step if step is not None else self._completed
        if done is None:
            raise RuntimeError("no step known yet: pass step= (the number of completed steps)")
        self._completed = max(done, self._completed or 0)
        if done in self._requested:
            return False
        self._save(done, ["manual"], metric_values(metrics) if metrics else None, tags)
        if wait:
            self.wait()
        return True

    def wait(self) -> CheckpointInfo | None:
        """Wait for the save in flight; raise its error. Returns the last committed checkpoint."""
        self._saver.wait()
        return self._last_saved

    # -- saving ---------------------------------------------------------------------------
    def _check(self, *, agreed: bool = False) -> None:
        if self._closed:
            raise RuntimeError("this Checkpointer is closed")
        # a background save failed since the last call. Under a process group, step() and
        # epoch_end() raise it from their agreement instead, on every rank at the same call: a
        # rank whose save thread finished first must not raise alone and skip a collective
        if not (agreed and self._dist is not None):
            self._saver.raise_error()

    def _save(self, done: int, triggers: list[str], metrics: Any, tags: Iterable[str] = ()) -> None:
        if not self._objects and self._extra is None:
            raise RuntimeError("nothing to save: pass model=, optimizer=... to resume() or step()")
        if metrics is not None:
            metrics = metric_values(metrics)
        meta: dict[str, Any] = {
            "trigger": "+".join(triggers),
            "epoch_done": self._epoch_done,
            "train_seconds": round(self._seconds_before + time.monotonic() - self._started, 3),
        }
        if self.total_steps is not None:
            meta["total_steps"] = self.total_steps
            meta["progress"] = round(min(1.0, done / self.total_steps), 6)
        if (
            self.keep_best is not None
            and metrics
            and self.keep_best[0] in metrics
            and self._better(metrics[self.keep_best[0]])
        ):
            self._best_value = metrics[self.keep_best[0]]
        self._requested.add(done)
        self._last_save_time = self._clock()
        self._saver.save(
            self._gather(),
            on_commit=self._committed,
            on_fail=lambda: self._requested.discard(done),
            defer=self._deferrable(),
            step=done,
            epoch=self._epoch,
            config=self.config,
            metrics=metrics,
            tags=(*self.tags, *tags),
            meta=meta,
            rng=ckptstore.capture_rng_state(),
            allow_pickle=self.allow_pickle,
        )

    def _committed(self, info: CheckpointInfo) -> None:
        self._last_saved = info
        if self.keep_best is not None:
            v = info.metrics.get(self.keep_best[0])
            if v is not None and not math.isnan(v) and (self._best is None or self._better_than(v, self._best)):
                self._best = info
        log.info("ckptstore: saved step %d (%s) to %s", info.step, info.short_id, self.uri)

    def _better_than(self, v: float, other: CheckpointInfo) -> bool:
        assert self.keep_best is not None
        o = other.metrics.get(self.keep_best[0])
        return o is None or (v <= o if self.keep_best[1] == "min" else v >= o)

    def _on_signal(self, sig: Any) -> None:
        self._signal_handled = True
        self.stop_requested = True
        try:
            self._saver.wait()
        finally:
            if self._last_saved is not None and self._last_saved.step == self._completed:
                say(
                    f"ckptstore: saved step {self._last_saved.step} ({self._last_saved.short_id}) to {self.uri} "
                    f"after {sig.name}\n"
                )
            if self.exit_on_signal:
                self.close(final=False)
        if self.exit_on_signal:
            say(f"ckptstore: exiting after {sig.name}; run the same command to resume\n")
            raise SystemExit(128 + int(sig))

    # -- teardown -----------------------------------------------------------------------
    def _saw_metrics(self, metrics: Mapping[str, Any] | None) -> None:
        if metrics and self.keep_best is not None and self.keep_best[0] in metrics:
            self._best_seen = True

    def _warn_best_unseen(self) -> None:
        """Once, at an epoch's end or at close: keep_best names a metric no call has passed."""
        if self.keep_best is None or self._best_seen or "best_unseen" in self._said or self._completed is None:
            return
        self._said.add("best_unseen")
        name = self.keep_best[0]
        warn(
            f"ckptstore: keep_best names the metric {name!r}, but step() and epoch_end() have never received "
            f"it, so no checkpoint is kept as the best by it. Pass metrics={{{name!r}: value}} to step() or "
            "epoch_end(), or name a metric you pass."
        )

    def close(self, *, final: bool = True) -> None:
        """Save the last step if no trigger saved it (``save_on_close`` and ``final``), wait for
        the save in flight, restore the signal handlers. Raises a background save's error."""
        if self._closed:
            return
        if final:
            self._warn_best_unseen()
        if self._signals.aborted:  # Ctrl+C twice: leave now, do not wait for anything
            final = False
        try:
            if (
                final
                and self.save_on_close
                and self._completed is not None
                and self._completed not in self._requested
                and (self._objects or self._extra is not None)
                and not self._saver.failed
            ):
                self._save(self._completed, ["final"], None)
        finally:
            self._closed = True
            self._signals.restore()
            for _, handle in self._hooks.values():
                handle.remove()
            self._hooks.clear()
            try:
                self._saver.close(wait=not self._signals.aborted)
            finally:
                if self._owns_store and not self._saver.busy:
                    self.store.close()
