"""The save pipeline: blobs -> chunks and packs -> hashed, encoded, written objects.

Blobs of at least ``pack_threshold`` bytes are cut into chunks, each its own object; smaller
blobs are grouped into packs of about ``pack_size`` bytes (one pack per byte-group width, so a
pack of float32 tensors still compresses as float32). The producer only slices; every object is
one task on a thread pool that hashes, looks up, encodes and writes (BLAKE3, zstd, numpy copies
and file writes release the GIL, so tasks overlap on all cores). On a local disk the objects go
through ``_objwrite.LocalSink``: large objects by direct I/O through small aligned buffers, small
ones by gather writes with writeback started at once, one wait for all the fsyncs at the end.

Memory stays bounded: CPU tensors are hashed straight from their own memory (no copy, packs
included), and written from it or through the sink's few direct-I/O buffers; work that needs
buffers (compression, copies off an accelerator through reusable pinned buffers, packs for a
remote backend) reserves their size from a byte budget of about 5% of the state before it is
queued. Unchanged data is recognised by its raw hash through
the dedup index (built from earlier manifests) and is neither re-encoded nor rewritten.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from concurrent.futures import Future
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from .._lazy import lazy
from ..format import _hashing
from ..format._layout import object_key
from ..format._manifest import Blob, Manifest, ObjectInfo, Segment
from ..format._tensors import PlannedBlob
from ..storage._backend import Backend
from ._buffers import ByteBudget, Staging, copy_many_to_host, copy_to_host, is_accelerator, scratch
from ._codec import MIN_SAVING, get_codec, object_codec
from ._objwrite import BackendSink, LocalSink, sink_for
from ._pools import borrow

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy("numpy", globals(), "np")
    torch = lazy("torch", globals())

BLOB_LABEL = b"ckptstore.blob.v1"
PACK_ALIGN = 64
#: compressed objects are at most this large (bounds the buffers one compression task needs)
COMPRESSED_CHUNK = 4 << 20
#: the pipeline's buffers stay below this fraction of the state's size (or one task's need)
BUDGET_FRACTION = 0.05


@dataclass
class DedupIndex:
    """What the store already holds, from manifests: raw content -> where it is stored."""

    blobs: dict[str, tuple[list[Segment], dict[str, ObjectInfo]]] = field(default_factory=dict)
    raw_objects: dict[str, tuple[str, ObjectInfo]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_manifest(self, m: Manifest) -> None:
        with self.lock:
            for key, info in m.objects.items():
                self.raw_objects.setdefault(info.raw_hash or key, (key, info))
            for b in m.blobs:
                if b.segments and b.hash not in self.blobs:
                    self.blobs[b.hash] = (b.segments, {s.object: m.objects[s.object] for s in b.segments})


@dataclass
class WriteResult:
    blobs: list[Blob]
    objects: dict[str, ObjectInfo]
    new_bytes: int
    new_objects: int


def host_bytes(source: Any, start: int, end: int, staging: Staging | None) -> tuple[np.ndarray, Any]:
    """Bytes ``[start, end)`` of a blob source as a uint8 numpy array on the host, and the
    staging buffer to give back afterwards (None when the array is a view of the source)."""
    if isinstance(source, np.ndarray):
        return source[start:end], None
    piece = source[start:end]
    if not is_accelerator(piece):
        return piece.numpy(), None
    if staging is None or end - start > staging.size:
        return piece.cpu().numpy(), None
    buf = staging.acquire()
    return copy_to_host(piece, buf).numpy(), buf


class _Session:
    """One save's shared state between the producer and the worker threads."""

    def __init__(
        self,
        sink: BackendSink | LocalSink,
        index: DedupIndex,
        suspect: frozenset[str] = frozenset(),
        written: set[str] | None = None,
    ) -> None:
        self.sink = sink
        self.written = written  # objects this save created (not found present), as they land
        self.index = index
        self.suspect = suspect  # objects found damaged or missing: never reused, overwritten when written
        self.objects: dict[str, ObjectInfo] = {}
        self.seen_raw: dict[str, tuple[str, ObjectInfo]] = {}
        self.small_seen: dict[str, tuple[int, int]] = {}  # small blob hash -> (pack id, offset)
        self.new_bytes = 0
        self.new_objects = 0
        self.lock = threading.Lock()

    def lookup(self, raw_hash: str) -> tuple[str, ObjectInfo] | None:
        with self.lock:
            hit = self.seen_raw.get(raw_hash)
        if hit is None:
            with self.index.lock:
                hit = self.index.raw_objects.get(raw_hash)
            if hit is not None and hit[0] in self.suspect:
                return None
        return hit

    def put(
        self, parts: list[np.ndarray], codec_name: str, rh: str | None = None, payload: int | None = None
    ) -> tuple[str, str, ObjectInfo]:
        """Store the concatenation of ``parts`` as one object unless an identical one exists;
        returns (raw hash, key, info). ``payload``: the tensor bytes among ``parts`` (a pack's
        alignment padding is not new data); the save's ``new_bytes`` counts at most that."""
        nbytes = sum(p.nbytes for p in parts)
        rh = rh or _hashing.digest_many(parts, parallel=False)
        hit = self.lookup(rh)
        if hit is not None:
            key, info = hit
            self._record(rh, key, info, 0)
            return rh, key, info
        stored: list[Any] = parts
        if codec_name != "none":
            raw = parts[0] if len(parts) == 1 else np.concatenate(parts, out=scratch(nbytes, "pack"))
            enc = get_codec(codec_name).encode(raw)
            if len(memoryview(enc).cast("B")) <= nbytes * (1 - MIN_SAVING):
                stored = [enc]
            else:
                codec_name = "none"
        size = sum(len(memoryview(p).cast("B")) for p in stored)
        key = rh if codec_name == "none" else _hashing.digest(stored[0], parallel=False)
        info = ObjectInfo(codec=codec_name, size=size, raw_size=nbytes, raw_hash=None if key == rh else rh)
        written = self.sink.put(object_key(key), stored, force=key in self.suspect)
        if written and self.written is not None:
            with self.lock:
                self.written.add(key)
        self._record(rh, key, info, min(size, nbytes if payload is None else payload) if written else 0)
        return rh, key, info

    def _record(self, rh: str, key: str, info: ObjectInfo, written: int) -> None:
        with self.lock:
            self.seen_raw.setdefault(rh, (key, info))
            self.objects[key] = info
            if written:
                self.new_bytes += written
                self.new_objects += 1


#: a save with less tensor data than this writes its objects on the calling thread: starting
#: and waiting on pool threads would cost more than the work (a small save's fixed cost)
INLINE_MAX = 1 << 20


class _Pipeline:
    """Runs object tasks on a pool, each holding its byte reservation until it finishes
    (``inline``: on the calling thread, at once)."""

    def __init__(self, workers: int, budget: ByteBudget, *, inline: bool = False) -> None:
        self.inline = inline
        self._lease = ExitStack()
        self.pool = None if inline else self._lease.enter_context(borrow(workers, "ckptstore-write"))
        self.budget = budget
        self.slots = threading.BoundedSemaphore(2 * workers)
        self.futures: list[Future[Any]] = []
        self.error: BaseException | None = None

    def submit(self, reserve: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.error is not None:
            raise self.error
        if self.inline:
            f: Future[Any] = Future()
            f.set_result(fn(*args))
            self.futures.append(f)
            return f
        self.slots.acquire()
        got = self.budget.acquire(reserve)

        def run() -> Any:
            try:
                return fn(*args)
            except BaseException as e:
                self.error = self.error or e
                raise
            finally:
                self.budget.release(got)
                self.slots.release()

        assert self.pool is not None
        fut = self.pool.submit(run)
        self.futures.append(fut)
        return fut

    def finish(self) -> None:
        self._lease.close()  # every task finished; the threads go back for the next save
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        for f in self.futures:
            f.cancel()
        self._lease.close()


@dataclass
class _Batch:
    """Small blobs waiting to become one pack: views of their bytes, not copies."""

    id: int
    group: int
    members: list[tuple[int, Any]] = field(default_factory=list)  # (blob index, bytes: numpy or device)
    nbytes: int = 0


@functools.cache
def _zeros() -> np.ndarray:
    """Padding between the members of a pack."""
    return np.zeros(PACK_ALIGN, dtype=np.uint8)


def _align_down(n: int, a: int) -> int:
    return max(a, n - n % a)


def effective_chunking(codec: str, chunk_size: int, pack_threshold: int, pack_size: int) -> tuple[int, int, int]:
    """(chunk size, pack threshold, pack size) a save really uses: compressed objects are at most
    ``COMPRESSED_CHUNK``, chunks are whole pages, packs never exceed a chunk. (For estimators of
    what a save will write.)"""
    if codec != "none":
        chunk_size = min(chunk_size, COMPRESSED_CHUNK)
    chunk_size = _align_down(chunk_size, 4096)
    return chunk_size, min(pack_threshold, chunk_size), min(pack_size, chunk_size)


def write_blobs(
    backend: Backend,
    planned: list[PlannedBlob],
    *,
    codec: str,
    index: DedupIndex,
    chunk_size: int,
    pack_threshold: int,
    pack_size: int,
    workers: int,
    groups: list[int] | None = None,
    staging: Staging | None = None,
    budget: int | None = None,
    progress: Callable[[int], None] | None = None,
    suspect: frozenset[str] = frozenset(),
    written: set[str] | None = None,
    cores: int | None = None,
) -> WriteResult:
    """Write every planned blob's bytes as durable objects; the blob table and the objects used.

    ``codec`` is the user's compression (``none`` or ``zstd``); ``groups`` gives each blob's
    byte-group width (from its dtype) so ``zstd`` becomes ``zstd-bg2`` / ``blosc-zstd-bg4/8`` where that helps.
    ``cores``: the CPU cores this save may keep busy (default: all; a process sharing the machine
    with others that save at once passes its share).
    When this returns, every object is durable under its name. ``written``: a set this fills with
    the objects the save creates as each lands (so a caller can remove them after a failure).
    """
    total = sum(p.nbytes for p in planned)
    sink = sink_for(backend, workers, total=total)
    s = _Session(sink, index, suspect, written)
    groups = groups or [1] * len(planned)
    compressing = codec != "none"
    chunk_size, pack_threshold, pack_size = effective_chunking(codec, chunk_size, pack_threshold, pack_size)
    # what one compression task needs: the encoded copy (about the raw size) and one plane;
    # at least two such tasks may run at once
    per_chunk = chunk_size + chunk_size // 4 if compressing else 0
    limit = budget if budget is not None else max(2 * per_chunk, int(total * BUDGET_FRACTION))
    if staging is None and any(is_accelerator(p.source) for p in planned):
        staging = Staging(chunk_size, count=max(1, min(workers, 4, limit // chunk_size)))
    # remote writes wait on the network: one thread per worker. Buffered local writes hardly block
    # (writeback runs in the kernel): tasks are CPU work (hashing, copies, compression), so one
    # thread per core. Direct writes wait for the device: two threads per core keep the cores busy
    # while some threads wait. Compressed saves too: on 2 cores a 1.3 GB zstd save took 2.6 s with
    # 4 threads against 3.2 s with 2, for about 10 MB more memory per thread (c-blosc's buffers).
    cores = max(1, cores or os.cpu_count() or 2)
    waits = isinstance(sink, LocalSink) and sink.direct
    threads = workers if sink.joins_parts else max(2, min(workers, 2 * cores if waits else cores))
    if backend.supports_zero_copy and workers > 1:  # transfers that need no buffer: keep more in flight
        threads = max(threads, backend.parallel_transfers)
    pipe = _Pipeline(threads, ByteBudget(limit), inline=total < INLINE_MAX and staging is None)
    pack_copies = compressing or sink.joins_parts  # packs need one contiguous buffer

    blobs: list[Blob | None] = [None] * len(planned)
    large: dict[int, list[Future[tuple[str, str, ObjectInfo]]]] = {}
    small: list[tuple[int, str, int, int, int]] = []  # blob, hash, pack id, offset, length
    small_lock = threading.Lock()
    pack_futures: dict[int, Future[Any]] = {}
    batches: dict[int, _Batch] = {}  # group width -> the batch being filled
    pack_ids = itertools.count()

    def chunk_task(source: Any, start: int, end: int, name: str) -> tuple[str, str, ObjectInfo]:
        raw, buf = host_bytes(source, start, end, staging)
        try:
            r = s.put([raw], name)
        finally:
            if buf is not None:
                staging.release(buf)  # type: ignore[union-attr]
        if progress:
            progress(end - start)
        return r

    def pack_task(b: _Batch) -> tuple[str, str, ObjectInfo] | None:
        on_device = [i for i, (_, src) in enumerate(b.members) if is_accelerator(src)]
        buf = None
        members: list[tuple[int, np.ndarray]] = [(bi, src) for bi, src in b.members]
        if on_device:  # one batch of asynchronous copies into a pinned buffer, one wait
            srcs = [b.members[i][1] for i in on_device]
            if staging is not None and sum(t.numel() for t in srcs) <= staging.size:
                buf = staging.acquire()
                hosts = [h.numpy() for h in copy_many_to_host(srcs, buf)]
            else:
                hosts = [t.cpu().numpy() for t in srcs]
            for i, h in zip(on_device, hosts):
                members[i] = (b.members[i][0], h)
        try:
            return _pack(b, members)
        finally:
            if buf is not None:
                staging.release(buf)  # type: ignore[union-attr]

    def _pack(b: _Batch, members: list[tuple[int, np.ndarray]]) -> tuple[str, str, ObjectInfo] | None:
        parts: list[np.ndarray] = []
        fill = payload = 0
        placed: list[tuple[int, str, int, int, int]] = []
        for bi, raw in members:
            n = raw.nbytes
            h = _hashing.digest(raw, parallel=False)
            with index.lock:
                hit = index.blobs.get(h)
            if hit is not None and any(seg.object in s.suspect for seg in hit[0]):
                hit = None  # its object was found damaged: store the bytes again
            if hit is not None:  # unchanged since an earlier checkpoint: reuse its segments
                segs, infos = hit
                with s.lock:
                    s.objects.update(infos)
                blobs[bi] = Blob(hash=h, nbytes=n, segments=list(segs))
                continue
            pad = (-fill) % PACK_ALIGN
            with s.lock:
                where = s.small_seen.get(h)
                if where is None:
                    s.small_seen[h] = (b.id, fill + pad)
            if where is not None:  # the same bytes are already in a pack of this save
                placed.append((bi, h, where[0], where[1], n))
                continue
            if pad:
                parts.append(_zeros()[:pad])
            placed.append((bi, h, b.id, fill + pad, n))
            parts.append(raw)
            fill += pad + n
            payload += n
        with small_lock:
            small.extend(placed)
        if progress:
            progress(sum(raw.nbytes for _, raw in members))
        return s.put(parts, object_codec(codec, b.group), payload=payload) if parts else None

    def flush(group: int) -> None:
        b = batches.pop(group)
        copy = b.nbytes if pack_copies and len(b.members) > 1 else 0  # joined into one buffer
        reserve = copy + (b.nbytes + b.nbytes // 4 if compressing else 0)
        pack_futures[b.id] = pipe.submit(reserve, pack_task, b)

    try:
        for bi, pb in enumerate(planned):
            n = pb.nbytes
            g = groups[bi]
            if n == 0:
                blobs[bi] = Blob(hash=_hashing.digest(b""), nbytes=0, segments=[])
            elif n < pack_threshold:
                b = batches.get(g)
                if b is not None and b.nbytes + PACK_ALIGN + n > pack_size:
                    flush(g)
                    b = None
                if b is None:
                    b = batches[g] = _Batch(id=next(pack_ids), group=g)
                src = pb.source if is_accelerator(pb.source) else host_bytes(pb.source, 0, n, None)[0]
                b.members.append((bi, src))
                b.nbytes += n + PACK_ALIGN
            else:
                name = object_codec(codec, g)
                chunks = []
                for a in range(0, n, chunk_size):
                    e = min(a + chunk_size, n)
                    reserve = e - a + (e - a) // 4 if compressing else 0
                    chunks.append(pipe.submit(reserve, chunk_task, pb.source, a, e, name))
                large[bi] = chunks
        for g in list(batches):
            flush(g)
        pipe.finish()
        sink.finish()
    except BaseException:
        pipe.abort()
        sink.abort()
        raise

    for bi, fs in large.items():
        parts = [f.result() for f in fs]
        segs = [Segment(object=key, offset=0, length=info.raw_size) for _, key, info in parts]
        h = parts[0][0] if len(parts) == 1 else _hashing.digest_parts(BLOB_LABEL, [p[0] for p in parts])
        blobs[bi] = Blob(hash=h, nbytes=planned[bi].nbytes, segments=segs)
    for bi, h, pid, off, length in small:
        _, key, _info = pack_futures[pid].result()
        blobs[bi] = Blob(hash=h, nbytes=length, segments=[Segment(object=key, offset=off, length=length)])
    done = [b for b in blobs if b is not None]
    assert len(done) == len(blobs)
    return WriteResult(blobs=done, objects=s.objects, new_bytes=s.new_bytes, new_objects=s.new_objects)


def blob_groups(entries: list[Any], nblobs: int) -> list[int]:
    """Each blob's byte-group width: that of its tensors' dtype when they agree, else 1."""
    from ._codec import group_for_dtype

    out: list[int | None] = [None] * nblobs
    for e in entries:
        g = group_for_dtype(e.kind, e.dtype)
        cur = out[e.blob]
        out[e.blob] = g if cur is None or cur == g else 1
    return [g or 1 for g in out]


def planned_device_sync(planned: list[PlannedBlob]) -> None:
    """Wait for queued device work before reading device tensors from worker threads."""
    if any(p.device.startswith("cuda") for p in planned) and torch.cuda.is_available():
        torch.cuda.synchronize()
