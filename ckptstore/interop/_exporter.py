"""``ckptstore export``: one stored checkpoint -> a plain folder a framework loads or resumes from.

- a Trainer checkpoint becomes a ``checkpoint-N``-style folder (``trainer.train(resume_from_checkpoint=DST)``);
- a Lightning checkpoint becomes ``DST/<name>.ckpt`` (``trainer.fit(ckpt_path=...)``,
  ``Module.load_from_checkpoint``) plus ``DST/model.safetensors``;
- anything else becomes ``DST/checkpoint.pt`` (``torch.load(..., weights_only=True)``) plus
  ``DST/model.safetensors`` when a model state dict can be found in it. A checkpoint imported
  from a ``torch.save`` file is written back with that file's own key names (``meta.source_keys``).

Model weights are always also written as ``.safetensors``. ``DST/checkpoint_info.json`` records
where the files came from (except in Trainer folders, which hold only the Trainer's own files).
The folder appears complete or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._lazy import lazy
from ..format._info import CheckpointInfo
from ..format._layout import CONFIG_KEY
from ..store._store import Store
from . import _hf_folder
from ._convert import from_plain
from ._torchfile import exported_file

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())

#: the record an export writes next to its files (also how an earlier export is recognised)
INFO_FILE = "checkpoint_info.json"
_WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "module", "model_state", "weights", "net")


def find_weights(state: Any) -> dict[str, torch.Tensor] | None:
    """A flat {name: tensor} model state dict in ``state``, if there is one."""

    def flat(v: Any) -> bool:
        return (
            isinstance(v, dict)
            and bool(v)
            and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())
        )

    if flat(state):
        return dict(state)
    if isinstance(state, dict):
        for k in _WEIGHT_KEYS:
            if flat(state.get(k)):
                return dict(state[k])
    return None


def _info_json(info: CheckpointInfo, files: list[str]) -> bytes:
    doc = {
        "store": info.uri,
        "id": info.id,
        "step": info.step,
        "epoch": info.epoch,
        "created_at": info.created_at.isoformat(),
        "metrics": dict(info.metrics),
        "files": files,
        "meta": {k: v for k, v in info.meta.items() if k != "plain_fixes"},
    }
    return (json.dumps(doc, indent=2, default=str) + "\n").encode()


def _not_the_store(out: str, store: Store) -> None:
    """Refuse a destination that is the store's folder, inside it or around it: the export
    replaces its destination whole."""
    marker = store.backend.local_path(CONFIG_KEY)
    if marker is None:
        return
    root, dest = os.path.realpath(os.path.dirname(marker)), os.path.realpath(out)
    if dest == root or dest.startswith(root + os.sep) or root.startswith(dest + os.sep):
        raise FileExistsError(
            f"{out} is the store's folder, or inside it, or holds it ({root}): export to a folder outside the store"
        )


def _write(state: Any, info: CheckpointInfo, tmp: str, allow_pickle: bool) -> list[str]:
    framework = info.meta.get("framework")
    if _hf_folder.is_hf_state(state):
        return _hf_folder.write_folder(state, tmp, allow_pickle=allow_pickle, weights_as_safetensors=True)
    files: list[str] = []
    if framework == "lightning":
        ckpt = from_plain(state, info.meta.get("plain_fixes") or [])
        name = os.path.basename(str(info.meta.get("name") or "checkpoint.ckpt")) or "checkpoint.ckpt"
        torch.save(ckpt, os.path.join(tmp, name))
        files.append(name)
        weights = find_weights(ckpt.get("state_dict") if isinstance(ckpt, dict) else None)
    else:
        weights = find_weights(state)
        obj = exported_file(state, info)
        torch.save(obj, os.path.join(tmp, "checkpoint.pt"))
        files.append("checkpoint.pt")
    if weights:
        _hf_folder.write_safetensors(weights, os.path.join(tmp, "model.safetensors"), {"format": "pt"})
        files.append("model.safetensors")
    with open(os.path.join(tmp, INFO_FILE), "wb") as f:
        f.write(_info_json(info, files))
    return [*files, INFO_FILE]


def export_checkpoint(
    uri: Store | str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    step: int | None = None,
    id: str | None = None,
    allow_pickle: bool = False,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[CheckpointInfo, list[str]]:
    """Write one checkpoint of the store ``uri`` (a :class:`Store` or a location; ``storage_options``:
    fsspec options for it), the newest unless ``step``/``id``, to the folder ``dst``.

    Returns the checkpoint's record and the files written (relative to ``dst``). ``dst`` must
    not exist or be empty unless ``overwrite``. Stored pickles (only there if the checkpoint was
    saved with ``allow_pickle=True``) are read and written only with ``allow_pickle=True``.
    """
    out = os.path.abspath(os.fspath(dst))
    if os.path.isfile(out):
        raise FileExistsError(f"{out} is a file; export writes a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pick a new folder or pass overwrite=True")
    _hf_folder.check_replaceable(out, (INFO_FILE,), "an earlier export")
    store = uri if isinstance(uri, Store) else Store(uri, storage_options=storage_options)
    try:
        _not_the_store(out, store)
        info = store.info(step, id=id)
        state = store.load(id=info.id, map_location="cpu", allow_pickle=allow_pickle)
    finally:
        if store is not uri:
            store.close()
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        files = _write(state, info, tmp, allow_pickle)
        _hf_folder.replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info, files
