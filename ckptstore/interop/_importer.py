"""``ckptstore import``: framework checkpoint files -> checkpoints in a store.

Recognised sources: a Hugging Face ``checkpoint-N/`` folder (or an output folder holding several,
or a ``save_pretrained`` folder), a Lightning ``.ckpt`` file, any ``torch.save`` file
(``checkpoint_step_4000.pt``, ``final_model.pt``), or a folder of such files. Single files go
through the one torch-file importer (``_torchfile``: its pickle rule, layout, and the step and
epoch rules of ``_names``). Nothing here imports transformers or lightning.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from .._errors import warn_user as warn
from ..format import _hashing
from ..format._info import CheckpointInfo
from ..store._store import Store
from ._hf_folder import is_hf_folder, read_hf_folder
from ._names import progress_from_name
from ._torchfile import save_torch_file

_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".tar")
_CKPT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


def _file_order(name: str) -> tuple[bool, int, str]:
    step = progress_from_name(name)[0]
    return step is None, step or 0, name


def sources(src: str) -> list[tuple[str, str]]:
    """(kind, path) pairs to import, in order: "hf" folders by step, or files by the step in their
    name, the files without one last (the store numbers them after the newest)."""
    if os.path.isfile(src):
        return [("file", src)]
    if not os.path.isdir(src):
        raise FileNotFoundError(f"nothing to import at {src}: no such file or folder")
    if is_hf_folder(src):
        return [("hf", src)]
    names = sorted(os.listdir(src))
    hf = [n for n in names if _CKPT_DIR_RE.match(n) and os.path.isdir(os.path.join(src, n))]
    if hf:
        hf.sort(key=lambda n: int(_CKPT_DIR_RE.match(n).group(1)))  # type: ignore[union-attr]
        return [("hf", os.path.join(src, n)) for n in hf]
    files = [n for n in names if n.endswith(_FILE_SUFFIXES) and os.path.isfile(os.path.join(src, n))]
    if not files:
        raise FileNotFoundError(f"{src} holds no checkpoint-N folders and no .ckpt/.pt/.pth/.bin files to import")
    return [("file", os.path.join(src, n)) for n in sorted(files, key=_file_order)]


def source_digest(path: str) -> str:
    """BLAKE3 over what an import reads at ``path``: a file's bytes, or a folder's files (names and
    bytes, in name order). Two imports of the same bytes give one checkpoint."""
    h = _hashing.hasher()
    if os.path.isfile(path):
        files = [("", path)]
    else:
        files = []
        for dirpath, dirnames, names in os.walk(path):
            dirnames.sort()
            for n in sorted(names):
                full = os.path.join(dirpath, n)
                files.append((os.path.relpath(full, path).replace(os.sep, "/"), full))
    for rel, full in files:
        h.update(rel.encode() + b"\0" + str(os.path.getsize(full)).encode() + b"\0")
        with open(full, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()


def _import_hf(
    store: Store,
    path: str,
    *,
    step: int | None,
    epoch: int | None,
    tags: list[str],
    allow_pickle: bool,
    meta_extra: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    folder = read_hf_folder(path, allow_pickle=allow_pickle)
    for reason in folder.skipped:
        warn(reason)
    meta = {
        "framework": "transformers",
        "folder": os.path.basename(os.path.normpath(path)),
        "epoch_float": folder.epoch_float,
        "imported_from": os.path.abspath(path),
        "skipped": folder.skipped,
        **(meta_extra or {}),
    }
    return store.save(
        folder.state,
        step=step if step is not None else folder.step,
        epoch=epoch if epoch is not None else folder.epoch,
        metrics=folder.metrics,
        tags=tags,
        meta=meta,
        rng=False,
    )


def import_checkpoint(
    src: str | os.PathLike[str],
    dst: Store | str | os.PathLike[str],
    *,
    step: int | None = None,
    epoch: int | None = None,
    tags: Iterable[str] = (),
    allow_pickle: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> list[CheckpointInfo]:
    """Import checkpoint files at ``src`` into the store ``dst`` (a :class:`Store` or a location,
    created if needed); returns the new checkpoints in the order they were saved.

    ``src`` is a Hugging Face ``checkpoint-N`` folder, a Trainer output folder holding several,
    a Lightning ``.ckpt``, a ``torch.save`` file, or a folder of such files (see
    :func:`import_torch_file` for how one file is laid out and numbered). ``step``/``epoch``
    override what the files say (only for a single checkpoint); ``tags`` label every imported
    checkpoint. Files are read with ``torch.load(weights_only=True)``; ``allow_pickle=True``
    unpickles files that hold more than tensors and plain data (this runs code from the file) and
    stores what has no plain form with pickle. ``storage_options``: fsspec options for ``dst``
    when it is a location.
    """
    source = os.fspath(src)
    items = sources(source)
    if len(items) > 1 and (step is not None or epoch is not None):
        raise ValueError(f"{source} holds {len(items)} checkpoints; step/epoch can only be given for one")
    tag_list = [tags] if isinstance(tags, str) else list(tags)
    store = dst if isinstance(dst, Store) else Store(dst, storage_options=storage_options)
    try:
        done: dict[str, CheckpointInfo] = {}
        if store.exists():
            for i in store.list():
                d = i.meta.get("source_digest")
                if isinstance(d, str):
                    done[d] = i
        out = []
        for kind, path in items:
            digest = source_digest(path)
            prev = done.get(digest)
            if prev is not None and step in (None, prev.step) and epoch in (None, prev.epoch):
                out.append(prev)
                continue
            fn = _import_hf if kind == "hf" else save_torch_file
            info = fn(
                store,
                path,
                step=step,
                epoch=epoch,
                tags=tag_list,
                allow_pickle=allow_pickle,
                meta_extra={"source_digest": digest},
            )
            done[digest] = info
            out.append(info)
        return out
    finally:
        if store is not dst:
            store.close()
