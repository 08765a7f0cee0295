"""Bounded memory for the save and load pipelines: a byte budget, and reusable host buffers for
copies between an accelerator and the CPU.

Copies off a CUDA device go through page-locked ("pinned") host buffers with
``non_blocking=True``: that is the fast path (tens of GB/s, against about 1.5 GB/s for ``.cpu()``
into fresh pageable memory). The buffers are allocated once per store and reused, and a buffer
that fed an asynchronous host-to-device copy is reused only after that copy has finished.
"""

from __future__ import annotations

import mmap
import threading
from typing import TYPE_CHECKING, Any

from .._lazy import lazy
from ._pools import thread_cache

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy("numpy", globals(), "np")
    torch = lazy("torch", globals())


_SCRATCH_MMAP_MIN = 1 << 20


def scratch(n: int, slot: str | None = None) -> np.ndarray:
    """An uninitialised 1-D uint8 buffer for temporary use.

    Large ones are anonymous mappings, returned to the OS as soon as they are dropped (buffers
    allocated with malloc on worker threads would stay in per-thread heaps and raise the
    process's resident memory for good). With ``slot``, a pipeline thread keeps its buffer for
    that slot and reuses it for its next task (fresh memory costs a page fault per 4 KiB); the
    buffer goes when the thread's pool is given back, at the end of the save or load
    (``_pools.thread_cache``). A slot's buffer is valid until the same thread asks for the same
    slot again."""
    if n < _SCRATCH_MMAP_MIN:
        return np.empty(n, dtype=np.uint8)
    if slot is None or not threading.current_thread().name.startswith("ckptstore-"):
        return np.frombuffer(mmap.mmap(-1, n), dtype=np.uint8)
    bufs = thread_cache()
    buf = bufs.get(slot)
    if buf is None or buf.nbytes < n:
        buf = bufs[slot] = np.frombuffer(mmap.mmap(-1, n), dtype=np.uint8)
    return buf[:n]


class ByteBudget:
    """At most ``limit`` bytes reserved at once; a reservation larger than the limit waits until
    nothing else is reserved, so one large task can always run."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, int(limit))
        self.used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> int:
        if n <= 0:
            return 0
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait()
            self.used += n
        return n

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self.used -= n
            self._cond.notify_all()


def is_accelerator(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "cpu"


class Staging:
    """A pool of 1-D uint8 host buffers of ``size`` bytes (pinned when CUDA is available)."""

    def __init__(self, size: int, count: int = 4, pin: bool | None = None) -> None:
        self.size = size
        self.count = max(1, count)
        self.pin = torch.cuda.is_available() if pin is None else pin
        self._free: list[tuple[torch.Tensor, Any]] = []
        self._made = 0
        self._cond = threading.Condition()

    def acquire(self) -> torch.Tensor:
        with self._cond:
            while not self._free and self._made >= self.count:
                self._cond.wait()
            if self._free:
                buf, event = self._free.pop()
            else:
                self._made += 1
                buf, event = None, None
        if buf is None:
            try:
                buf = torch.empty(self.size, dtype=torch.uint8, pin_memory=self.pin)
            except RuntimeError:  # pinning can fail (locked-memory limits): pageable still works
                buf = torch.empty(self.size, dtype=torch.uint8)
        if event is not None:
            event.synchronize()  # an asynchronous copy out of this buffer may still be running
        return buf

    def release(self, buf: torch.Tensor, event: Any = None) -> None:
        with self._cond:
            self._free.append((buf, event))
            self._cond.notify()

    def clear(self) -> None:
        """Free the buffers that are not in use."""
        with self._cond:
            for _, event in self._free:
                if event is not None:
                    event.synchronize()
            self._made -= len(self._free)
            self._free.clear()


def copy_to_host(src: torch.Tensor, buf: torch.Tensor) -> torch.Tensor:
    """Copy a 1-D uint8 device tensor into the front of a host staging buffer; wait for it."""
    n = src.numel()
    dst = buf[:n]
    if src.device.type == "cuda":
        with torch.cuda.device(src.device):
            dst.copy_(src, non_blocking=dst.is_pinned())
            torch.cuda.current_stream(src.device).synchronize()
    else:
        dst.copy_(src)
        if src.device.type == "mps":
            torch.mps.synchronize()
    return dst


def copy_many_to_host(srcs: list[torch.Tensor], buf: torch.Tensor) -> list[torch.Tensor]:
    """Copy several 1-D uint8 device tensors back to back into a host staging buffer, with one
    wait at the end; the host views, in order."""
    out, off = [], 0
    cuda = [s.device for s in srcs if s.device.type == "cuda"]
    for src in srcs:
        n = src.numel()
        dst = buf[off : off + n]
        dst.copy_(src, non_blocking=src.device.type == "cuda" and dst.is_pinned())
        out.append(dst)
        off += n
    for d in set(cuda):
        torch.cuda.current_stream(d).synchronize()
    if any(s.device.type == "mps" for s in srcs):
        torch.mps.synchronize()
    return out


def copy_from_host(buf: torch.Tensor, dst: torch.Tensor) -> Any:
    """Start copying a host buffer into a device tensor; returns an event to wait on before the
    buffer is reused (None when the copy has already finished)."""
    if dst.device.type == "cuda":
        with torch.cuda.device(dst.device):
            dst.copy_(buf, non_blocking=buf.is_pinned())
            if not buf.is_pinned():
                return None
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(dst.device))
            return event
    dst.copy_(buf)
    if dst.device.type == "mps":
        torch.mps.synchronize()
    return None


def device_sync(devices: set[torch.device]) -> None:
    """Wait for queued copies to the given devices."""
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)
        elif d.type == "mps":
            torch.mps.synchronize()
