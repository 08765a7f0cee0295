"""Host staging buffers: take a consistent copy of a training state without cloning on the GPU.

A :class:`StagingBuffers` owns one flat host arena (page-locked when the state lives on CUDA)
that is reused from save to save and grows only when the state does: the host memory a
background save needs is bounded by one copy of the state. :meth:`StagingBuffers.snapshot`
rebuilds the state's containers and copies every tensor into its own slice of the arena:

- CPU tensors: ``copy_`` on the calling thread; with ``defer`` some copies run on a helper
  thread instead (torch releases the GIL while copying).
- CUDA tensors: ``copy_(non_blocking=True)`` on a side stream per device, ordered after the
  work already queued on the current stream. The current stream then waits on an event
  (GPU-side, the CPU does not block), so kernels queued later cannot change a tensor before it
  is copied. With ``defer``, the wait for those tensors moves to :meth:`Snapshot.barrier`
  (called from an optimizer step pre-hook), letting the copy overlap forward and backward.
- DTensors (FSDP2, tensor parallel): their local shard is staged as above and wrapped back
  into a DTensor of the same mesh, placements, global shape and stride (no communication).
- anything else (MPS, odd tensors): copied synchronously or passed through unchanged (the
  store then reports what it cannot save).

Each staged tensor has a storage of its own (a view of the arena through NumPy), so the store
sees separate tensors, not one shared storage. Tensors that are the same view of the same
memory (tied weights) stay one tensor. :meth:`Snapshot.wait` returns once every byte has
landed; only then may the tree be read.
"""

from __future__ import annotations

import collections
import functools
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

ALIGN = 64
_ROUND = 1 << 20

__all__ = ["Snapshot", "StagingBuffers", "storage_key", "tensor_bytes"]


def storage_key(t: torch.Tensor) -> tuple[str, int]:
    """Identifies the memory a tensor lives in: (device, storage data pointer); for a DTensor,
    its local shard's (a DTensor has no storage of its own)."""
    local = _local_shard(t)
    if local is not None:
        t = local
    return str(t.device), t.untyped_storage().data_ptr()


def _stageable(t: torch.Tensor) -> bool:
    return (
        type(t) in (torch.Tensor, torch.nn.Parameter)
        and t.layout == torch.strided
        and not t.is_quantized
        and not t.is_meta
        and not t.is_nested
        and t.device.type in ("cpu", "cuda", "mps")
    )


@functools.cache
def _dtensor_type() -> Any:
    """torch's DTensor class, or None when this torch has none (or no torch.distributed)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch < 2.5 kept it private
        try:
            from torch.distributed._tensor import DTensor
        except ImportError:
            return None
    return DTensor


def _local_shard(t: torch.Tensor) -> torch.Tensor | None:
    """The local shard of a DTensor (None for any other tensor)."""
    cls = _dtensor_type() if type(t) not in (torch.Tensor, torch.nn.Parameter) else None
    if cls is None or not isinstance(t, cls):
        return None
    return t.to_local().detach()


def _cuda_ok(err: Any) -> bool:
    return int(getattr(err, "value", err)) == 0


class _Arena:
    """One flat uint8 host buffer; page-locked with cudaHostRegister when asked (exact size: the
    caching pinned allocator behind ``pin_memory=True`` rounds up to a power of two, which is
    the fallback)."""

    def __init__(self, nbytes: int, pin: bool) -> None:
        self.nbytes = nbytes
        self.registered = False
        self.tensor = torch.empty(nbytes, dtype=torch.uint8)
        if pin:
            try:
                # 1 = cudaHostRegisterPortable: pinned for every device's context
                err = torch.cuda.cudart().cudaHostRegister(self.tensor.data_ptr(), nbytes, 1)
                self.registered = _cuda_ok(err)
            except Exception:  # noqa: BLE001 - fall back to the caching pinned allocator
                self.registered = False
            if not self.registered:
                self.tensor = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        else:
            self.tensor.zero_()  # touch every page now (in the reserving thread), not during a save
        self.pinned = pin
        self.array = self.tensor.numpy()

    def view(self, offset: int, nbytes: int, dtype: torch.dtype, shape: torch.Size) -> torch.Tensor:
        # from_numpy gives each slice a storage of its own that keeps the arena alive
        raw = torch.from_numpy(self.array[offset : offset + nbytes])
        return raw.view(dtype).reshape(shape)

    def free(self) -> None:
        if self.registered:
            try:
                torch.cuda.cudart().cudaHostUnregister(self.tensor.data_ptr())
            except Exception:  # noqa: BLE001 - best effort on teardown
                pass
            self.registered = False


@dataclass
class _Copy:
    src: torch.Tensor
    dst: torch.Tensor
    deferred: bool


class Snapshot:
    """A staged copy of a state. Read :attr:`tree` only after :meth:`wait`."""

    def __init__(self, tree: Any, nbytes: int, owner: StagingBuffers) -> None:
        self.tree = tree
        self.nbytes = nbytes
        self._owner = owner
        self._events: list[tuple[torch.device, Any]] = []  # (device, event of all copies)
        self._barrier_events: list[tuple[torch.device, Any]] = []  # deferred copies' events
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._barrier_done = False

    def barrier(self) -> None:
        """Order later writes to the deferred tensors after their copies (call before the
        optimizer step). CUDA: the current stream waits on an event; CPU: joins the copier."""
        if self._barrier_done:
            return
        self._barrier_done = True
        for dev, ev in self._barrier_events:
            torch.cuda.current_stream(dev).wait_event(ev)
        if self._thread is not None:
            self._thread.join()

    def wait(self) -> None:
        """Block until every copy has landed in host memory; raises a copy's error."""
        for _, ev in self._events:
            ev.synchronize()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def release(self) -> None:
        """The tree is no longer read; the arena may be reused."""
        self.tree = None
        self._owner._release(self)


class StagingBuffers:
    """Reusable, bounded host memory for snapshots; one snapshot at a time."""

    def __init__(self, *, pin_memory: bool | None = None) -> None:
        self.pin_memory = pin_memory
        self._arena: _Arena | None = None
        self._reserving: threading.Thread | None = None
        self._active: Snapshot | None = None
        self._streams: dict[torch.device, Any] = {}
        self.allocations = 0
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        self._join_reserve()
        return self._arena.nbytes if self._arena is not None else 0

    @property
    def pinned(self) -> bool:
        self._join_reserve()
        return bool(self._arena is not None and self._arena.pinned)

    # -- memory -------------------------------------------------------------------------
    def _want_pin(self, cuda: bool) -> bool:
        if self.pin_memory is not None:
            return bool(self.pin_memory and torch.cuda.is_available())
        return cuda and torch.cuda.is_available()

    def _allocate(self, nbytes: int, pin: bool) -> None:
        with self._lock:
            if self._arena is not None and self._arena.nbytes >= nbytes and self._arena.pinned == pin:
                return
            if self._arena is not None:  # never hold two arenas: drop the old one first
                self._arena.free()
                self._arena = None
            size = -(-max(nbytes, 1) // _ROUND) * _ROUND
            self._arena = _Arena(size, pin)
            self.allocations += 1

    def reserve(self, nbytes: int, *, cuda: bool = False, background: bool = True) -> None:
        """Allocate (and page-lock) the arena ahead of the first snapshot, by default on a
        background thread so that the first save does not pay for it."""
        self._join_reserve()
        pin = self._want_pin(cuda)
        if self._arena is not None and self._arena.nbytes >= nbytes and self._arena.pinned == pin:
            return
        if not background:
            self._allocate(nbytes, pin)
            return

        def run() -> None:
            try:
                self._allocate(nbytes, pin)
            except Exception:  # noqa: BLE001 - not fatal: the next snapshot allocates again
                pass

        self._reserving = threading.Thread(target=run, name="ckptstore-staging-alloc", daemon=True)
        self._reserving.start()

    def _join_reserve(self) -> None:
        t = self._reserving
        if t is not None:
            t.join()
            self._reserving = None

    def close(self) -> None:
        self._join_reserve()
        with self._lock:
            if self._arena is not None:
                self._arena.free()
                self._arena = None
        self._active = None

    # -- snapshots ------------------------------------------------------------------------
    def _release(self, snap: Snapshot) -> None:
        if self._active is snap:
            self._active = None

    def snapshot(self, tree: Any, *, defer: Callable[[torch.Tensor], bool] | None = None) -> Snapshot:
        """Copy ``tree`` (containers rebuilt, tensors staged); see the module docstring."""
        if self._active is not None:
            raise RuntimeError("the previous snapshot is still in use; release() it first")
        sources: dict[tuple[Any, ...], _Slot] = {}

        def visit(t: torch.Tensor) -> Any:
            local = _local_shard(t)
            if local is not None:
                return _DSlot(visit(local), t)
            if not _stageable(t):
                return t
            if t.numel() == 0:
                return t.detach().to("cpu", copy=True)
            key = (
                str(t.device),
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                tuple(t.stride()),
                t.dtype,
                t.is_conj(),
                t.is_neg(),
            )
            slot = sources.get(key)
            if slot is None:
                slot = sources[key] = _Slot(t)
            return slot

        skeleton = _rebuild(tree, visit)
        offset = 0
        layout: list[tuple[_Slot, int, int]] = []
        for slot in sources.values():
            n = slot.src.numel() * slot.src.element_size()
            layout.append((slot, offset, n))
            offset += -(-n // ALIGN) * ALIGN
        cuda = any(slot.src.device.type == "cuda" for slot in sources.values())
        self._join_reserve()
        if sources:
            self._allocate(offset, self._want_pin(cuda))
        arena = self._arena
        copies: list[_Copy] = []
        for slot, off, n in layout:
            assert arena is not None
            slot.dst = arena.view(off, n, slot.src.dtype, slot.src.shape)
            copies.append(_Copy(slot.src, slot.dst, bool(defer and defer(slot.src))))
        staged = _rebuild(skeleton, _staged_leaf, copy_arrays=False)
        snap = Snapshot(staged, offset, self)
        self._active = snap
        try:
            self._run_copies(snap, copies)
        except BaseException:
            self._active = None
            raise
        return snap

    def _stream(self, dev: torch.device) -> Any:
        s = self._streams.get(dev)
        if s is None:
            s = self._streams[dev] = torch.cuda.Stream(dev)
        return s

    def _run_copies(self, snap: Snapshot, copies: list[_Copy]) -> None:
        later: list[_Copy] = []
        by_dev: dict[torch.device, list[_Copy]] = collections.defaultdict(list)
        with torch.no_grad():
            for c in copies:
                if c.src.device.type == "cuda":
                    by_dev[c.src.device].append(c)
                elif c.deferred and c.src.device.type == "cpu":
                    later.append(c)
                else:
                    c.dst.copy_(c.src)
            for dev, group in by_dev.items():
                self._cuda_copies(snap, dev, group)
        if later:

            def run() -> None:
                try:
                    with torch.no_grad():
                        for c in later:
                            c.dst.copy_(c.src)
                except BaseException as e:  # noqa: BLE001 - surfaced by wait()
                    snap._error = e

            snap._thread = threading.Thread(target=run, name="ckptstore-staging-copy", daemon=True)
            snap._thread.start()

    def _cuda_copies(self, snap: Snapshot, dev: torch.device, group: list[_Copy]) -> None:
        stream = self._stream(dev)
        current = torch.cuda.current_stream(dev)
        stream.wait_stream(current)  # copy what the queued kernels produce, not older bytes
        now = [c for c in group if not c.deferred]
        deferred = [c for c in group if c.deferred]
        with torch.cuda.stream(stream):
            for c in now:
                c.dst.copy_(c.src, non_blocking=True)
                c.src.record_stream(stream)
            first = torch.cuda.Event()
            first.record(stream)
            for c in deferred:
                c.dst.copy_(c.src, non_blocking=True)
                c.src.record_stream(stream)
            done = torch.cuda.Event()
            done.record(stream)
        # later kernels on the training stream wait (on the GPU) for the copies they could race
        current.wait_event(first)
        if deferred:
            snap._barrier_events.append((dev, done))
        else:
            current.wait_event(done)
        snap._events.append((dev, done))


class _Slot:
    __slots__ = ("dst", "src")

    def __init__(self, src: torch.Tensor) -> None:
        self.src = src
        self.dst: torch.Tensor | None = None


class _DSlot:
    """A DTensor being staged: its local shard's slot (or the shard itself when not staged)."""

    __slots__ = ("inner", "src")

    def __init__(self, inner: Any, src: torch.Tensor) -> None:
        self.inner = inner
        self.src = src


def _staged_leaf(x: Any) -> Any:
    if isinstance(x, _Slot):
        return x.dst
    if isinstance(x, _DSlot):
        local = _staged_leaf(x.inner)
        src: Any = x.src
        # the source's spec (mesh, placements, global shape and stride), around the staged shard
        # where it lies. Not DTensor.from_local: it moves a shard to the mesh's device, so on a
        # CUDA mesh the host copy would go back to the GPU (memory doubled), and since this runs
        # before the copies are made, that copy would read the buffer before the data is in it
        spec = getattr(src, "_spec", None)
        if spec is not None:
            return type(src)(local, spec, requires_grad=False)
        return type(src).from_local(
            local, src.device_mesh, src.placements, run_check=False, shape=src.shape, stride=src.stride()
        )
    return x


def _rebuild(node: Any, leaf: Callable[[Any], Any], *, copy_arrays: bool = True, _depth: int = 0) -> Any:
    """Copy containers (dict, OrderedDict, list, tuple, set, numpy arrays); tensors (first
    pass) or slots (second pass) go through ``leaf``; other leaves are kept as they are."""
    t = type(node)
    if isinstance(node, (torch.Tensor, _Slot, _DSlot)):
        return leaf(node)
    if _depth > 200:  # the store reports over-deep states; do not recurse forever here
        return node
    if t is dict or t is collections.OrderedDict:
        out = t()
        for k, v in node.items():
            out[k] = _rebuild(v, leaf, copy_arrays=copy_arrays, _depth=_depth + 1)
        return out
    if t is list:
        return [_rebuild(v, leaf, copy_arrays=copy_arrays, _depth=_depth + 1) for v in node]
    if t is tuple:
        return tuple(_rebuild(v, leaf, copy_arrays=copy_arrays, _depth=_depth + 1) for v in node)
    if t is set or t is frozenset:
        return t(node)
    if t is np.ndarray and copy_arrays:
        return node.copy()
    return node


def tensor_bytes(tree: Any) -> tuple[int, bool]:
    """(bytes a snapshot of ``tree`` needs, whether any tensor is on CUDA): for reserving."""
    total, cuda, seen = 0, False, set()

    def leaf(t: Any) -> Any:
        nonlocal total, cuda
        local = _local_shard(t) if isinstance(t, torch.Tensor) else None
        if local is not None:
            t = local
        if isinstance(t, torch.Tensor) and _stageable(t) and t.numel():
            key = (str(t.device), t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
            if key not in seen:
                seen.add(key)
                total += -(-(t.numel() * t.element_size()) // ALIGN) * ALIGN
                cuda = cuda or t.device.type == "cuda"
        return t

    _rebuild(tree, leaf, copy_arrays=False)
    return total, cuda
