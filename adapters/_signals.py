"""Turn termination signals into a request for an emergency save at the next safe point.

The handler only records which signal came (and writes one line to stderr with ``os.write``,
which is safe there); the training loop saves when it next calls the checkpointer, never from
inside the handler in the middle of a step. A second SIGINT (Ctrl+C twice) raises
``KeyboardInterrupt`` at once. :meth:`SignalCatcher.restore` puts the previous handlers back.
Handlers can only be installed from the main thread; elsewhere the catcher stays inactive and
says so once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

log = logging.getLogger("ckptstore.loop")

DEFAULT_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1")


def resolve_signals(names: Iterable[str | int | signal.Signals]) -> list[signal.Signals]:
    """Signal names or numbers -> ``signal.Signals``; names this platform lacks are skipped
    (SIGUSR1 on Windows)."""
    out: list[signal.Signals] = []
    for n in names:
        if isinstance(n, str):
            name = n.upper() if n.upper().startswith("SIG") else "SIG" + n.upper()
            sig = getattr(signal.Signals, name, None)
            if sig is None:
                if name not in DEFAULT_SIGNALS and not hasattr(signal, name):
                    raise ValueError(f"unknown signal {n!r}")
                continue
        else:
            sig = signal.Signals(int(n))
        if sig not in out:
            out.append(sig)
    return out


class SignalCatcher:
    """Records the first of ``signals`` to arrive; see the module docstring."""

    def __init__(
        self,
        signals: Iterable[str | int | signal.Signals] = DEFAULT_SIGNALS,
        message: str = "ckptstore: got {name}; saving a checkpoint at the next step, then exiting{hint}",
    ) -> None:
        self.signals = resolve_signals(signals)
        self.message = message
        self.received: signal.Signals | None = None
        self.aborted = False
        self._pid = os.getpid()
        self._previous: dict[signal.Signals, Any] = {}
        self.installed = False

    @property
    def name(self) -> str | None:
        return self.received.name if self.received is not None else None

    def install(self) -> bool:
        if self.installed or not self.signals:
            return self.installed
        if threading.current_thread() is not threading.main_thread():
            log.warning(
                "ckptstore: not in the main thread, so no emergency save on %s", "/".join(s.name for s in self.signals)
            )
            return False
        self._pid = os.getpid()
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except (OSError, ValueError, RuntimeError) as e:  # pragma: no cover - platform limits
                log.warning("ckptstore: cannot handle %s: %s", sig.name, e)
        self.installed = bool(self._previous)
        return self.installed

    def restore(self) -> None:
        """Put back the handlers that were there before :meth:`install`."""
        if not self.installed:
            return
        if threading.current_thread() is not threading.main_thread():  # pragma: no cover
            log.warning("ckptstore: cannot restore signal handlers outside the main thread")
            return
        for sig, prev in self._previous.items():
            try:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (OSError, ValueError, TypeError):  # pragma: no cover
                pass
        self._previous.clear()
        self.installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        if os.getpid() != self._pid:  # a forked child (a DataLoader worker) inherited the handler
            self._delegate(sig, frame)
            return
        if self.received is not None:
            if sig == signal.SIGINT:
                self.aborted = True
                say("ckptstore: second Ctrl+C; aborting without saving\n")
                raise KeyboardInterrupt
            return
        self.received = sig
        hint = " (press Ctrl+C again to abort without saving)" if sig == signal.SIGINT else ""
        say(self.message.format(name=sig.name, hint=hint) + "\n")

    def _delegate(self, sig: signal.Signals, frame: FrameType | None) -> None:
        prev = self._previous.get(sig, signal.SIG_DFL)
        if callable(prev):
            prev(int(sig), frame)
        elif prev == signal.SIG_DFL or prev is None:
            if sig == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)


def say(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:  # pragma: no cover - no stderr
        pass
