"""The methods the benchmark compares, each with durability matched: every save returns only
after its data and names are fsync'd (ckptstore does this itself; the peers get an explicit
fsync of their files and folder, as a training script that wants a durable checkpoint must do).
"""

from __future__ import annotations

import os
import shutil
import warnings
from typing import Any, Callable

import numpy as np
import torch
from _measure import fsync_dir_of, fsync_path
from _state import tensors_of


def flat_unique(state: Any) -> dict[str, torch.Tensor]:
    """name -> tensor with one entry per storage (safetensors refuses shared tensors; tied
    weights are stored once by every method)."""
    out, seen = {}, set()
    for name, t in tensors_of(state).items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key in seen:
            continue
        seen.add(key)
        out[name] = t
    return out


def _rm(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)


# --- raw: the disk's limits --------------------------------------------------------------------
def raw_write(state: Any, path: str) -> None:
    """All tensor bytes, back to back, in one file; fsync'd. The sequential write limit."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in flat_unique(state).values():
            view = memoryview(t.detach().contiguous().view(-1).view(torch.uint8).numpy())
            while view:
                view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir_of(path)


def raw_read(path: str) -> np.ndarray:
    """The same bytes read back sequentially into one buffer. The sequential read limit."""
    size = os.path.getsize(path)
    out = np.empty(size, dtype=np.uint8)
    view, got = memoryview(out), 0
    with open(path, "rb", buffering=0) as f:
        while got < size:
            n = f.readinto(view[got : got + (16 << 20)])
            if not n:
                break
            got += n
    return out


# --- peers -------------------------------------------------------------------------------------
def torch_save(state: Any, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir_of(path)


def torch_load(path: str) -> Any:
    return torch.load(path, weights_only=True)


def torch_load_mmap(path: str) -> Any:
    return torch.load(path, weights_only=True, mmap=True)


def st_save(state: Any, path: str) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in flat_unique(state).items()}, path)
    fsync_path(path)
    fsync_dir_of(path)


def st_load(path: str) -> Any:
    from safetensors.torch import load_file

    return load_file(path)


def dcp_save(state: Any, path: str) -> None:
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(flat_unique(state), checkpoint_id=path)  # FileSystemWriter fsyncs its files
    fsync_path(path)  # its folder entries too


def dcp_load(path: str) -> Any:
    """DCP loads in place: the tensors to fill are made from the checkpoint's own metadata (as a
    script does from its model), then filled by one single-process ``dcp.load``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = dcp.FileSystemReader(path).read_metadata()
    sd = {
        k: torch.empty(m.size, dtype=m.properties.dtype)
        for k, m in md.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, checkpoint_id=path)
    return sd


def ckpt_save(compression: str | None = None) -> Callable[[Any, str], Any]:
    def save(state: Any, path: str) -> Any:
        import ckptstore

        return ckptstore.save(state, path, compression=compression, rng=False, progress=False)

    return save


def ckpt_load(**kw: Any) -> Callable[[str], Any]:
    def load(path: str) -> Any:
        import ckptstore

        return ckptstore.load(path, **kw)

    return load


def touch(state: Any) -> tuple[int, int]:
    """Read every byte of every distinct tensor: the same pass after every load, so that lazy
    (memory-mapped) loads pay for the bytes they did not read yet. Each tensor's bytes are
    summed as 64-bit words by numpy on one thread (wrapping; the last nbytes % 8 bytes one by
    one): it reads the memory once, allocates nothing of the tensor's size, and does not depend
    on torch's thread pool (whose hand-offs cost milliseconds per tensor on a busy 2-core
    machine). Returns (the sum mod 2**64, the bytes read): equal sums mean equal bytes loaded."""
    total = nbytes = 0
    for t in flat_unique(state).values():
        b = t.detach().contiguous().view(-1).view(torch.uint8)
        if b.storage_offset() % 8:  # a word view needs 8-byte offsets; rare, copy it
            b = b.clone()
        n8 = b.numel() // 8 * 8
        if n8:
            total += int(b[:n8].view(torch.int64).numpy().sum())
        if n8 < b.numel():
            total += int(b[n8:].numpy().sum(dtype=np.uint64))
        total &= _MASK64
        nbytes += b.numel()
    return total, nbytes


_MASK64 = (1 << 64) - 1


#: save row -> (save function, the load rows measured on the files it wrote). Load rows are the
#: names of benchmarks/_loadproc.py's LOADERS; "raw disk" is the disk's own limits.
SAVES: dict[str, tuple[Callable[[Any, str], Any], tuple[str, ...]]] = {
    "raw disk": (raw_write, ("raw disk",)),
    "ckptstore": (ckpt_save(), ("ckptstore", "ckptstore verify=False", "ckptstore mmap=False", "hash only")),
    "ckptstore zstd": (ckpt_save("zstd"), ("ckptstore zstd",)),
    "torch.save": (torch_save, ("torch.load", "torch.load mmap=True")),
    "safetensors": (st_save, ("safetensors",)),
    "dcp": (dcp_save, ("dcp",)),
}
#: load rows measured only with --extra-loads (no target reads them)
EXTRA_LOADS = ("ckptstore mmap=False",)
#: the peers that targets compare against (save rows, load rows)
PEER_SAVES = ("torch.save", "safetensors", "dcp")
PEER_LOADS = ("torch.load", "torch.load mmap=True", "safetensors", "dcp")

remove = _rm
