"""A competing CPU-bound process: the "busy machine" of the benchmarks.

``Busy(True)`` starts one Python process that spins on pure-Python arithmetic (one core's worth
of work, default priority, not pinned: the scheduler places it as it would a data-loader worker
or a second job) and stops it on exit. It records how much CPU the competitor actually got, so a
result shows that the machine was busy during the measurement. ``Busy(False)`` does nothing (the
quiet mode), so callers write one ``with`` for both modes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

SPIN = "x = 0\nwhile True:\n    x = (x * 1103515245 + 12345) % 2147483648\n"


class Busy:
    def __init__(self, on: bool) -> None:
        self.on = on
        self.proc: subprocess.Popen[bytes] | None = None
        self.t0 = 0.0
        #: wall seconds the competitor ran, and CPU seconds it got (user + system)
        self.wall = 0.0
        self.cpu = 0.0

    def __enter__(self) -> Busy:
        if self.on:
            self.proc = subprocess.Popen([sys.executable, "-S", "-c", SPIN], stdin=subprocess.DEVNULL)
            self.t0 = time.perf_counter()
            time.sleep(0.05)  # the interpreter is up and spinning before the measurement starts
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL)
        _pid, status, ru = os.wait4(self.proc.pid, 0)
        self.proc.returncode = -signal.SIGKILL if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        self.wall = time.perf_counter() - self.t0
        self.cpu = ru.ru_utime + ru.ru_stime
        self.proc = None

    @property
    def share(self) -> float:
        """The competitor's CPU use as a fraction of one core (about 1.0 when it got a core)."""
        return self.cpu / self.wall if self.wall else 0.0
