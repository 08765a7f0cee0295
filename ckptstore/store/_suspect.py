"""Objects this process found damaged or missing, per store.

Dedup must never reuse such an object (a checkpoint saved after a fallback would be damaged
again), and the next save of that content must overwrite it rather than skip it as "already
there". Readers mark objects here when a hash, size or existence check fails; writers consult it.
The registry is process-wide because several ``Store`` instances (an adapter's resume and its
saver) may open the same location.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_bad: dict[str, set[str]] = {}


def mark(store_id: str, key: str) -> None:
    with _lock:
        _bad.setdefault(store_id, set()).add(key)


def bad(store_id: str) -> frozenset[str]:
    with _lock:
        return frozenset(_bad.get(store_id, ()))


def clear(store_id: str, keys: set[str]) -> None:
    with _lock:
        s = _bad.get(store_id)
        if s:
            s -= keys
