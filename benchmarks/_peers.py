"""The methods the benchmark compares, each with durability matched: every save returns only
after its data and names are fsync'd (ckptstore does this itself; the peers get an explicit
fsync of their files and folder, as a training script that wants a durable checkpoint must do).
"""

from __future__ import annotations

import os
import shutil
import warnings
from dataclasses import dataclass
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


@dataclass
class Method:
    name: str
    save: Callable[[Any, str], Any]
    load: Callable[[str], Any]
    #: loads that map the file and read nothing until a tensor is touched
    lazy_load: bool = False


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


def make_dcp_load(state: Any) -> Callable[[str], Any]:
    template = {k: (v.shape, v.dtype) for k, v in flat_unique(state).items()}

    def load(path: str) -> Any:
        import torch.distributed.checkpoint as dcp

        sd = {k: torch.empty(shape, dtype=dt) for k, (shape, dt) in template.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(sd, checkpoint_id=path)
        return sd

    return load


def ckpt_save(compression: str | None = None) -> Callable[[Any, str], Any]:
    def save(state: Any, path: str) -> Any:
        import ckptstore

        return ckptstore.save(state, path, compression=compression, rng=False)

    return save


def ckpt_load(**kw: Any) -> Callable[[str], Any]:
    def load(path: str) -> Any:
        import ckptstore

        return ckptstore.load(path, **kw)

    return load


def methods(state: Any) -> list[Method]:
    return [
        Method("ckptstore", ckpt_save(), ckpt_load()),
        Method("torch.save", torch_save, torch_load),
        Method("safetensors", st_save, st_load, lazy_load=True),
        Method("dcp", dcp_save, make_dcp_load(state)),
    ]


#: extra load variants measured on the files a method above wrote
LOAD_VARIANTS: dict[str, tuple[str, Callable[[str], Any], bool]] = {
    "ckptstore verify=False": ("ckptstore", ckpt_load(verify=False), True),
    "ckptstore mmap=False": ("ckptstore", ckpt_load(mmap=False), False),
    "torch.load mmap=True": ("torch.save", torch_load_mmap, True),
}

remove = _rm
