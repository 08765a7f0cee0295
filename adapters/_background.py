"""One background job at a time, whose error is kept for the caller's next call."""

from __future__ import annotations

import threading
from typing import Callable


class BackgroundJob:
    """Runs callables on a worker thread, one at a time.

    :meth:`submit` waits for the previous job first (so at most one is ever in flight).
    An exception raised by a job is stored and re-raised, once, by the next :meth:`wait` or
    :meth:`submit`; it is never dropped. The thread is a daemon so that an abort (a second
    Ctrl+C) is not held up by it; owners that want the job finished at interpreter exit wait
    for it from an ``atexit`` handler (which runs before daemon threads stop).
    """

    def __init__(self, name: str = "ckptstore-save") -> None:
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def submit(self, fn: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001 - handed to the caller's next call
                self._error = e

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the job in flight; re-raise its error. False if ``timeout`` ran out."""
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                return False
            self._thread = None
        self.raise_error()
        return True

    @property
    def failed(self) -> bool:
        """True when the job raised and the error was not yet handed to the caller."""
        return self._error is not None

    def raise_error(self) -> None:
        err, self._error = self._error, None
        if err is not None:
            raise err
