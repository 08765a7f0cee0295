"""The load pipeline: objects -> verified, decoded bytes -> blob buffers.
Every object is read once (packs serve many blobs) on a thread pool, checked against the hash
that names it (unless ``verify=False``), decoded with its codec, and its segments placed in the
blob buffers, by the cheapest path the layout allows:

- zero-copy (``mmap``): a CPU blob made of uncompressed objects on a local disk becomes a private
  mapping of the object files (see ``_mmap``); verifying hashes the mapped bytes once;
- direct: an uncompressed object that is one whole segment is read straight into its blob's
  buffer (``readinto``) and hashed there, with no intermediate copy; a compressed one is
  decoded straight into it;
- otherwise the object is read into a temporary buffer, and its ranges are copied out.

Blobs that go to an accelerator are filled through reusable pinned buffers with asynchronous
copies. Temporary buffers draw on a byte budget, so memory stays bounded.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable

from .._errors import IntegrityError, ObjectMissingError, UnsupportedFormatError
from .._lazy import lazy
from ..format import _hashing
from ..format._layout import object_key
from ..format._manifest import Manifest
from ..storage._backend import Backend
from . import _mmap
from ._buffers import ByteBudget, Staging, copy_from_host, device_sync, scratch
from ._codec import get_codec
from ._pools import borrow

if TYPE_CHECKING:
    import numpy as np
    import torch
else:
    np = lazy("numpy", globals(), "np")
    torch = lazy("torch", globals())

BUDGET_FRACTION = 0.05
# A local object is read (and hashed) in pieces of this size: the kernel's readahead then
# fetches the next piece while this one is hashed, and the hash reads bytes still in cache. One
# read of a whole object waits for all of it first (measured: 25-35% slower cold on a VM disk).
READ_PIECE = 1 << 20


def _on_host(t: torch.Tensor | torch.device) -> bool:
    """Whether a buffer (or device) is ordinary host memory; anything else is filled through
    staging buffers."""
    return (t.type if isinstance(t, torch.device) else t.device.type) == "cpu"


_Use = tuple[int, int, int, int]  # blob, offset in the decoded object, length, offset in the blob


def check_manifest(m: Manifest, where: str) -> None:
    """Structural checks that must pass before any buffer is allocated."""
    for key, info in m.objects.items():
        if info.codec == "none" and info.raw_size != info.size:
            raise IntegrityError(f"{where}: object {key[:12]} is uncompressed but sizes differ")
        try:
            get_codec(info.codec)
        except ValueError:  # not damage: a codec this version does not know (format.md §12)
            raise UnsupportedFormatError(
                f"{where}: object {key[:12]} has unknown codec {info.codec!r}; it may have "
                "been written by a newer ckptstore (pip install -U ckptstore)"
            ) from None
    for i, b in enumerate(m.blobs):
        total = 0
        for seg in b.segments:
            seg_info = m.objects.get(seg.object)
            if seg_info is None:
                raise IntegrityError(
                    f"{where}: blob {i} references object {seg.object[:12]} missing from the object table"
                )
            if seg.offset + seg.length > seg_info.raw_size:
                raise IntegrityError(f"{where}: blob {i} reads past the end of object {seg.object[:12]}")
            total += seg.length
        if total != b.nbytes:
            raise IntegrityError(f"{where}: blob {i} has {b.nbytes} bytes but its segments hold {total}")
    from ..format._sharded import check_sharded
    from ..format._tensors import check_entry

    for j, e in enumerate(m.tensors):
        if e.blob >= len(m.blobs):
            raise IntegrityError(f"{where}: tensor {j} points at blob {e.blob}, which does not exist")
        check_entry(e, m.blobs[e.blob].nbytes, f"{where}: tensor {j}")
    check_sharded(m, where)


def select_tensors(m: Manifest, indices: list[int]) -> Manifest:
    """A manifest holding only tensor entries ``indices`` (in that order) and the blobs and
    objects they need: reading it reads only those objects."""
    blob_map: dict[int, int] = {}
    blobs: list[Any] = []
    tensors: list[Any] = []
    objects: dict[str, Any] = {}
    for i in indices:
        if type(i) is not int or not 0 <= i < len(m.tensors):
            raise IndexError(f"tensor index {i!r} out of range (the checkpoint has {len(m.tensors)})")
        e = m.tensors[i]
        if e.blob not in blob_map:
            blob_map[e.blob] = len(blobs)
            b = m.blobs[e.blob]
            blobs.append(b)
            for seg in b.segments:
                objects[seg.object] = m.objects[seg.object]
        tensors.append(e.model_copy(update={"blob": blob_map[e.blob]}))
    return m.model_copy(
        update={
            "tree": [{"$tensor": k} for k in range(len(tensors))],
            "tensors": tensors,
            "blobs": blobs,
            "objects": objects,
            "distributed": None,
            "version": 1,
        }
    )


def blob_devices(m: Manifest, placement: Any) -> list[torch.device]:
    """Where each blob's buffer goes: the placement's device for its torch tensors (a callable
    ``map_location`` gets CPU tensors), the CPU for numpy arrays."""
    from ..format._tensors import dtype_from_name

    cpu = torch.device("cpu")
    entries: dict[int, list[Any]] = {}
    for e in m.tensors:
        if e.kind == "torch":
            entries.setdefault(e.blob, []).append(e)
    out = []
    seen: dict[tuple[str, frozenset[str]], tuple[torch.device, int]] = {}
    for bi in range(len(m.blobs)):
        es = entries.get(bi)
        if not es or placement is None or placement.callable:
            out.append(cpu)
            continue
        key = (es[0].device, frozenset(e.dtype for e in es))
        hit = seen.get(key)
        if hit is None:  # ask once per (device, dtypes); repeat its count of blobs kept on the CPU
            before = placement.kept_on_cpu
            dev = placement.device_for(key[0], {dtype_from_name(d) for d in key[1]})
            hit = seen[key] = (dev, placement.kept_on_cpu - before)
        else:
            placement.kept_on_cpu += hit[1]
        out.append(hit[0])
    return out


def _missing(where: str, key: str, backend: Backend) -> ObjectMissingError:
    return ObjectMissingError(
        f"{where}: object {key} is missing from the store ({backend.describe(object_key(key))}); "
        "the checkpoint is damaged. Load an earlier one, or restore the object from a backup.",
        key,
    )


class _Loader:
    def __init__(
        self,
        backend: Backend,
        m: Manifest,
        where: str,
        verify: bool,
        bufs: list[torch.Tensor | None],
        staging: Staging | None,
    ) -> None:
        self.backend = backend
        self.m = m
        self.where = where
        self.verify = verify
        self.bufs = bufs
        self.staging = staging
        self.local = backend.local_path(object_key(next(iter(m.objects)))) is not None if m.objects else False

    def check(self, key: str, data: np.ndarray) -> None:
        if self.verify:
            self._compare(key, _hashing.digest(data, parallel=False))

    def _compare(self, key: str, digest: str) -> None:
        if digest != key:
            raise IntegrityError(f"{self.where}: object {key} does not match its hash; the checkpoint is damaged", key)

    def decode(self, key: str, stored: np.ndarray, out: np.ndarray) -> None:
        """Decode a compressed object into ``out`` and, when verifying, check the decoded bytes
        against the object's ``raw_hash`` (format.md §4): a codec bug never goes unseen."""
        info = self.m.objects[key]
        get_codec(info.codec).decode_into(stored, out)
        if self.verify and info.raw_hash is not None and _hashing.digest(out, parallel=False) != info.raw_hash:
            raise IntegrityError(
                f"{self.where}: object {key} decodes ({info.codec}) to bytes that do not match its raw_hash "
                "(the decoded bytes are wrong although the stored bytes verify: a codec fault); the checkpoint "
                "cannot be read safely",
                key,
            )

    def read_checked(self, key: str, size: int, into: np.ndarray | None = None) -> np.ndarray:
        """The object's stored bytes (into ``into`` when given), checked against its hash when
        verifying; a local file is hashed piece by piece as it is read."""
        path = self.backend.local_path(object_key(key)) if self.verify else None
        if path is None:
            data = self.read(key, size, into)
            self.check(key, data)
            return data
        return self._read_local(key, path, size, into, _hashing.hasher())

    def read(self, key: str, size: int, into: np.ndarray | None = None) -> np.ndarray:
        """The object's stored bytes (into ``into`` when given, for a local store)."""
        path = self.backend.local_path(object_key(key))
        if path is None:
            try:
                if into is not None:  # straight into the caller's buffer where the backend can
                    got = self.backend.read_into(object_key(key), into)
                    if got != size:
                        raise IntegrityError(
                            f"{self.where}: object {key} has {got} bytes, expected {size} (truncated?)", key
                        )
                    return into
                data = self.backend.read(object_key(key))
            except FileNotFoundError:
                raise _missing(self.where, key, self.backend) from None
            if len(data) != size:
                raise IntegrityError(
                    f"{self.where}: object {key} has {len(data)} bytes, expected {size} (truncated?)", key
                )
            arr = np.frombuffer(data, dtype=np.uint8)
            if into is not None:
                into[:] = arr
                return into
            return arr
        return self._read_local(key, path, size, into, None)

    def _read_local(self, key: str, path: str, size: int, into: np.ndarray | None, h: Any) -> np.ndarray:
        """Read a local object file in pieces (see READ_PIECE), feeding hasher ``h`` if given
        and checking its digest at the end."""
        out = into if into is not None else scratch(size, "read")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise _missing(self.where, key, self.backend) from None
        try:
            if os.fstat(fd).st_size != size:
                raise IntegrityError(
                    f"{self.where}: object {key} has {os.fstat(fd).st_size} bytes, expected {size} (truncated?)", key
                )
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            view, got = memoryview(out).cast("B"), 0
            while got < size:
                n = os.readv(fd, [view[got : min(size, got + READ_PIECE)]])
                if n == 0:
                    raise IntegrityError(f"{self.where}: object {key} ended after {got} of {size} bytes", key)
                if h is not None:
                    h.update(view[got : got + n])
                got += n
        finally:
            os.close(fd)
        if h is not None:
            self._compare(key, h.hexdigest())
        return out

    def place(self, src: np.ndarray, uses: list[_Use]) -> None:
        """Copy ranges of decoded bytes into their blobs' buffers."""
        for bi, off, length, dest in uses:
            buf = self.bufs[bi]
            assert buf is not None
            piece = src[off : off + length]
            if _on_host(buf):
                buf.numpy()[dest : dest + length] = piece
            else:
                self.to_device(piece, buf[dest : dest + length])

    def to_device(self, piece: np.ndarray, dst: torch.Tensor) -> None:
        st = self.staging
        if st is None or piece.nbytes > st.size:
            dst.copy_(torch.from_numpy(piece))
            return
        host = st.acquire()
        host.numpy()[: piece.nbytes] = piece
        st.release(host, copy_from_host(host[: piece.nbytes], dst))

    def fetch(self, key: str, uses: list[_Use], mapped: torch.Tensor | None) -> None:
        info = self.m.objects[key]
        if mapped is not None:  # a mapping of the object: verify it, feed the non-mapped uses
            src = mapped.numpy()
            self.check(key, src)
            self.place(src, uses)
            return
        whole = len(uses) == 1 and uses[0][1] == 0 and uses[0][2] == info.raw_size
        dest = self.bufs[uses[0][0]] if whole else None
        if dest is not None and _on_host(dest):
            out = dest.numpy()[uses[0][3] : uses[0][3] + info.raw_size]
            if info.codec == "none":
                self.read_checked(key, info.size, into=out)  # straight into the tensor
            else:
                stored = self.read_checked(key, info.size)
                self.decode(key, stored, out)
            return
        st = self.staging
        if dest is not None and st is not None and info.raw_size <= st.size:
            # to an accelerator: read (or decode) into a pinned buffer, then one async copy
            host = st.acquire()
            event = None
            try:
                h = host.numpy()[: info.raw_size]
                if info.codec == "none":
                    self.read_checked(key, info.size, into=h)
                else:
                    stored = self.read_checked(key, info.size)
                    self.decode(key, stored, h)
                off = uses[0][3]
                event = copy_from_host(host[: info.raw_size], dest[off : off + info.raw_size])
            finally:
                st.release(host, event)
            return
        stored = self.read_checked(key, info.size)
        if info.codec == "none":
            src = stored
        else:
            src = scratch(info.raw_size, "decode")
            self.decode(key, stored, src)
        self.place(src, uses)


def _map_blob(
    backend: Backend, m: Manifest, bi: int, mapped_obj: dict[str, torch.Tensor], where: str
) -> torch.Tensor | None:
    """Blob ``bi`` as a mapping of its object files, or None when its layout does not allow it
    (compressed, or chunks that are not whole pages) or mapping fails."""
    segs = m.blobs[bi].segments
    if len(segs) == 1 and segs[0].object in mapped_obj:  # another blob of the same pack
        s = segs[0]
        return mapped_obj[s.object][s.offset : s.offset + s.length]
    if not segs or any(m.objects[s.object].codec != "none" for s in segs):
        return None
    paths = [backend.local_path(object_key(s.object)) for s in segs]
    if any(p is None for p in paths):
        return None
    try:
        if len(segs) == 1:
            s = segs[0]
            if s.object not in mapped_obj:
                mapped_obj[s.object] = _mmap.map_file(paths[0], m.objects[s.object].size, s.object)  # type: ignore[arg-type]
            return mapped_obj[s.object][s.offset : s.offset + s.length]
        whole = all(s.offset == 0 and s.length == m.objects[s.object].raw_size for s in segs)
        if not whole or not _mmap.stitchable([s.length for s in segs]):
            return None
        region = _mmap.map_files([(p, s.length, s.object) for p, s in zip(paths, segs)])  # type: ignore[misc]
    except FileNotFoundError as e:
        key = next((s.object for s, p in zip(segs, paths) if p == e.filename), segs[0].object)
        raise _missing(where, key, backend) from None
    except IntegrityError as e:
        raise IntegrityError(f"{where}: {e}", e.key) from None
    except (OSError, ValueError):
        return None  # the filesystem refuses mappings: read the bytes instead
    off = 0
    for s in segs:
        mapped_obj.setdefault(s.object, region[off : off + s.length])
        off += s.length
    return region


def _hosted_packs(m: Manifest, devices: list[torch.device], bufs: list[torch.Tensor | None]) -> dict[str, list[int]]:
    """Objects (packs) whose every referencing blob is a CPU blob lying wholly inside it, that
    are mostly in use: reading each whole into one buffer that its blobs are views of avoids a
    copy per blob."""
    refs: dict[str, set[int]] = {}
    for bi, b in enumerate(m.blobs):
        for seg in b.segments:
            refs.setdefault(seg.object, set()).add(bi)
    out = {}
    for key, bis in refs.items():
        if len(bis) < 2 or any(
            bufs[bi] is not None or not _on_host(devices[bi]) or len(m.blobs[bi].segments) != 1 for bi in bis
        ):
            continue
        if 2 * sum(m.blobs[bi].nbytes for bi in bis) >= m.objects[key].raw_size:
            out[key] = sorted(bis)
    return out


def _need(info: Any, uses: list[_Use], bufs: list[torch.Tensor | None], mapped: bool, local: bool) -> int:
    """Bytes of temporary buffers one object's task needs."""
    if mapped:
        return 0
    whole = len(uses) == 1 and uses[0][1] == 0 and uses[0][2] == info.raw_size
    dest = bufs[uses[0][0]]
    if whole and dest is not None and _on_host(dest):
        return 0 if info.codec == "none" and local else info.size
    return info.size + (info.raw_size if info.codec != "none" else 0)


def read_blobs(
    backend: Backend,
    m: Manifest,
    *,
    where: str,
    workers: int,
    verify: bool = True,
    progress: Callable[[int], None] | None = None,
    devices: list[torch.device] | None = None,
    mmap: bool = False,
    staging: Staging | None = None,
    into: dict[int, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """A 1-D uint8 tensor per blob of the manifest (on ``devices[i]``, default CPU), filled with
    verified bytes. With ``mmap``, CPU blobs of uncompressed local objects are file mappings.
    ``into`` gives buffers (1-D uint8, the blob's size, on its device) for some blobs: their
    bytes are read straight into them and they are returned as they are."""
    cpu = torch.device("cpu")
    devices = devices or [cpu] * len(m.blobs)
    can_map = mmap and _mmap.supported()
    bufs: list[torch.Tensor | None] = [None] * len(m.blobs)
    for bi, buf in (into or {}).items():
        bufs[bi] = buf
    mapped_obj: dict[str, torch.Tensor] = {}  # object -> a mapping of all of its bytes
    by_object: dict[str, list[_Use]] = {}
    for bi in range(len(m.blobs)):
        if can_map and bufs[bi] is None and _on_host(devices[bi]):
            bufs[bi] = _map_blob(backend, m, bi, mapped_obj, where)
    # a pack read for CPU blobs is read whole into one buffer, and its blobs are views of it
    for key, members in _hosted_packs(m, devices, bufs).items():
        host = torch.empty(m.objects[key].raw_size, dtype=torch.uint8)
        by_object[key] = [(len(bufs), 0, host.numel(), 0)]
        bufs.append(host)
        for bi in members:
            seg = m.blobs[bi].segments[0]
            bufs[bi] = host[seg.offset : seg.offset + seg.length]
    given = set(into or ())
    for bi, b in enumerate(m.blobs):
        if bi not in given:
            if bufs[bi] is not None:  # mapped, or a view of a pack read whole
                continue
            try:
                bufs[bi] = torch.empty(b.nbytes, dtype=torch.uint8, device=devices[bi])
            except RuntimeError as e:
                raise MemoryError(
                    f"{where}: cannot allocate {b.nbytes} bytes on {devices[bi]} for a tensor: {e}"
                ) from None
        dest = 0
        for seg in b.segments:
            by_object.setdefault(seg.object, []).append((bi, seg.offset, seg.length, dest))
            dest += seg.length
    if verify:  # mapped objects are hashed once each (and feed any blob that is not mapped)
        for key in mapped_obj:
            by_object.setdefault(key, [])
    if staging is None and not all(_on_host(d) for d in devices):
        staging = Staging(max((i.raw_size for i in m.objects.values()), default=1), count=min(workers, 4))
    loader = _Loader(backend, m, where, verify, bufs, staging)
    total = sum(b.nbytes for b in m.blobs)
    direct = loader.local or backend.supports_zero_copy  # whole objects land in their tensors, no temporary
    needs = {k: _need(m.objects[k], uses, bufs, k in mapped_obj, direct) for k, uses in by_object.items()}
    budget = ByteBudget(max(max(needs.values(), default=0), int(total * BUDGET_FRACTION)))

    def task(key: str, reserved: int) -> None:
        try:
            mapped = mapped_obj.get(key)
            if mapped is None or verify or by_object[key]:
                loader.fetch(key, by_object[key], mapped)
            if progress:
                progress(m.objects[key].raw_size)
        finally:
            budget.release(reserved)

    keys = list(by_object)
    if backend.supports_zero_copy and workers > 1:  # transfers that need no buffer: keep more in flight
        workers = max(workers, min(len(keys), backend.parallel_transfers))
    errors: list[BaseException] = []

    def guarded(key: str, reserved: int) -> None:
        try:
            task(key, reserved)
        except BaseException as e:
            errors.append(e)
            raise

    if workers <= 1 or len(keys) <= 1:
        for k in keys:
            task(k, budget.acquire(needs[k]))
    else:
        with borrow(workers, "ckptstore-read") as pool:
            for k in keys:
                if errors:
                    break
                pool.submit(guarded, k, budget.acquire(needs[k]))
            if errors:
                pool.cancel()
        if errors:
            raise errors[0]
    if progress:
        progress(sum(m.objects[k].raw_size for k in mapped_obj if k not in by_object))
    device_sync({d for d in devices if not _on_host(d)})
    return _own_storages(bufs[: len(m.blobs)], given)  # type: ignore[arg-type]


_OWN_COPY_MAX = 64 << 20  # a blob in a larger buffer is copied out up to this size


def _own_storages(bufs: list[torch.Tensor], given: set[int]) -> list[torch.Tensor]:
    """Give every blob a storage of its own where packs or mappings made several blobs views of
    one buffer: tensors that did not share a storage when saved must not share one when loaded
    (``torch.save`` of one would write them all; safetensors refuses shared memory). Only small
    (packed) blobs are ever in that position, so the copies are cheap. Buffers the caller gave
    (``given``) stay as they are."""
    users: dict[tuple[str, int], int] = {}
    for b in bufs:
        if b.numel():
            k = (str(b.device), b.untyped_storage().data_ptr())
            users[k] = users.get(k, 0) + 1
    out = []
    for i, b in enumerate(bufs):
        if (
            i not in given
            and b.numel()
            and (
                users[(str(b.device), b.untyped_storage().data_ptr())] > 1
                or (b.untyped_storage().nbytes() > b.numel() and b.numel() < _OWN_COPY_MAX)
            )
        ):
            # numpy's copy is several times cheaper per call than Tensor.clone for small buffers
            b = torch.from_numpy(b.numpy().copy()) if b.device.type == "cpu" else b.clone()
        out.append(b)
    return out


def verify_objects(backend: Backend, m: Manifest, *, where: str, workers: int) -> None:
    """Check every object of a manifest (size, BLAKE3, and that it decodes to its raw size)
    without building the tensors: memory stays at a few buffers per thread."""
    loader = _Loader(backend, m, where, True, [], None)

    def one(key: str) -> None:
        info = m.objects[key]
        stored = loader.read(key, info.size)
        loader.check(key, stored)
        if info.codec != "none":
            loader.decode(key, stored, scratch(info.raw_size, "decode"))

    keys = sorted(m.objects)
    if workers <= 1 or len(keys) <= 1:
        for k in keys:
            one(k)
        return
    with borrow(workers, "ckptstore-verify") as pool:
        pool.map(one, keys)
