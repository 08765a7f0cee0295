"""``ckptstore import``: framework checkpoint files -> checkpoints in a store.

Recognised sources: a Hugging Face ``checkpoint-N/`` folder (or an output folder holding several),
a Lightning ``.ckpt`` file, any ``torch.save`` file (``checkpoint_step_4000.pt``, ``final_model.pt``),
or a folder of such files. Step and epoch come from the files when they carry them. Files are read
with ``torch.load(weights_only=True)``; only ``allow_pickle=True`` unpickles arbitrary objects.
Nothing here imports transformers or lightning.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from typing import Any, Iterable, Mapping

import ckptstore

from . import _hf_folder
from ._convert import safe_torch_load, to_plain, why_refused

_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".tar")
_STEP_KEYS = ("global_step", "step", "iteration", "iter", "steps", "num_steps", "total_steps")
_METRIC_HINTS = ("loss", "acc", "score", "metric", "perplexity", "ppl", "f1", "bleu", "rouge", "auc")
_STEP_IN_NAME = re.compile(r"(?:step|iter|iteration|checkpoint|ckpt)[=_-]?(\d+)", re.IGNORECASE)
_EPOCH_IN_NAME = re.compile(r"epoch[=_-]?(\d+)", re.IGNORECASE)
_CKPT_DIR_RE = re.compile(r"^checkpoint-(\d+)$")


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int) and v >= 0:
        return v
    if isinstance(v, float) and v.is_integer() and v >= 0:
        return int(v)
    try:
        import torch

        if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.is_floating_point():
            return int(v.item()) if v.item() >= 0 else None
    except ImportError:  # pragma: no cover
        pass
    return None


def _from_name(regex: re.Pattern[str], name: str) -> int | None:
    found = regex.findall(os.path.splitext(name)[0])
    return int(found[-1]) if found else None


def is_lightning(obj: Any) -> bool:
    return isinstance(obj, dict) and ("pytorch-lightning_version" in obj or (
        "state_dict" in obj and "global_step" in obj and ("loops" in obj or "callbacks" in obj)))


def _plain_metrics(obj: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, str) and any(h in k.lower() for h in _METRIC_HINTS):
                if isinstance(v, float) and math.isfinite(v):
                    out[k] = v
                elif hasattr(v, "numel") and v.numel() == 1 and v.is_floating_point():
                    out[k] = float(v.item())
    return out


def _sources(src: str) -> list[tuple[str, str]]:
    """(kind, path) pairs to import, in order: "hf" folders by step, then files by step/name."""
    if os.path.isfile(src):
        return [("file", src)]
    if not os.path.isdir(src):
        raise FileNotFoundError(f"nothing to import at {src}: no such file or folder")
    if _hf_folder.is_hf_folder(src):
        return [("hf", src)]
    names = sorted(os.listdir(src))
    hf = [n for n in names if _CKPT_DIR_RE.match(n) and os.path.isdir(os.path.join(src, n))]
    if hf:
        hf.sort(key=lambda n: int(_CKPT_DIR_RE.match(n).group(1)))  # type: ignore[union-attr]
        return [("hf", os.path.join(src, n)) for n in hf]
    files = [n for n in names if n.endswith(_FILE_SUFFIXES) and os.path.isfile(os.path.join(src, n))]
    if not files:
        raise FileNotFoundError(f"{src} holds no checkpoint-N folders and no .ckpt/.pt/.pth/.bin files to import")
    # numbered files in step order first, then the rest (final_model.pt) after them
    files.sort(key=lambda n: (_from_name(_STEP_IN_NAME, n) is None, _from_name(_STEP_IN_NAME, n) or 0, n))
    return [("file", os.path.join(src, n)) for n in files]


def _import_hf(store: ckptstore.Store, path: str, *, step: int | None, epoch: int | None, tags: list[str],
               allow_pickle: bool) -> ckptstore.CheckpointInfo:
    state, skipped = _hf_folder.read_folder(path, allow_pickle=allow_pickle)
    for reason in skipped:
        warnings.warn(reason, stacklevel=3)
    prog = _hf_folder.progress_of(state, os.path.basename(os.path.normpath(path)))
    meta = {"framework": "transformers", "folder": os.path.basename(os.path.normpath(path)),
            "epoch_float": prog["epoch_float"], "imported_from": os.path.abspath(path), "skipped": skipped}
    return store.save(state, step=step if step is not None else prog["step"],
                      epoch=epoch if epoch is not None else prog["epoch"], metrics=prog["metrics"], tags=tags,
                      meta=meta)


def _import_file(store: ckptstore.Store, path: str, *, step: int | None, epoch: int | None, tags: list[str],
                 allow_pickle: bool) -> ckptstore.CheckpointInfo:
    try:
        obj = safe_torch_load(path, allow_pickle=allow_pickle)
    except Exception as e:  # noqa: BLE001 - refused by the safe unpickler, or not a torch file
        if allow_pickle:
            raise ckptstore.UnsupportedFormatError(f"cannot read {path} as a torch.save file: {e}") from None
        raise ckptstore.PickleNotAllowedError(
            f"{path} holds more than tensors and plain data ({why_refused(path, e)}). Importing it means "
            "unpickling it, which can run code from the file: pass --allow-pickle (allow_pickle=True) only if "
            "you trust it."
        ) from None
    name = os.path.basename(path)
    if is_lightning(obj):
        plain, fixes = to_plain(obj)
        metrics = {}
        for cb in (obj.get("callbacks") or {}).values():
            if isinstance(cb, dict) and isinstance(cb.get("monitor"), str) and cb.get("current_score") is not None:
                try:
                    metrics[cb["monitor"]] = float(cb["current_score"])
                except (TypeError, ValueError, RuntimeError):
                    pass
        meta = {"framework": "lightning", "path": os.path.abspath(path), "name": name, "plain_fixes": fixes,
                "lightning": obj.get("pytorch-lightning_version"), "imported_from": os.path.abspath(path)}
        s = step if step is not None else _int(obj.get("global_step"))
        e = epoch if epoch is not None else _int(obj.get("epoch"))
        return store.save(plain, step=s, epoch=e, metrics=metrics, tags=tags, meta=meta, allow_pickle=allow_pickle)
    s, e = step, epoch
    if isinstance(obj, dict):
        if s is None:
            s = next((_int(obj[k]) for k in _STEP_KEYS if k in obj and _int(obj[k]) is not None), None)
        if e is None and "epoch" in obj:
            e = _int(obj["epoch"])
    s = s if s is not None else _from_name(_STEP_IN_NAME, name)
    e = e if e is not None else _from_name(_EPOCH_IN_NAME, name)
    plain, fixes = to_plain(obj)
    meta = {"framework": "torch", "name": name, "imported_from": os.path.abspath(path), "plain_fixes": fixes}
    return store.save(plain, step=s, epoch=e, metrics=_plain_metrics(obj), tags=tags, meta=meta,
                      allow_pickle=allow_pickle)


def import_checkpoint(src: str | os.PathLike[str], dst: ckptstore.Store | str | os.PathLike[str], *,
                      step: int | None = None, epoch: int | None = None, tags: Iterable[str] = (),
                      allow_pickle: bool = False, storage_options: Mapping[str, Any] | None = None
                      ) -> list[ckptstore.CheckpointInfo]:
    """Import checkpoint files at ``src`` into the store ``dst``; returns the new checkpoints.

    ``src`` is a Hugging Face ``checkpoint-N`` folder, a Trainer output folder holding several,
    a Lightning ``.ckpt``, a ``torch.save`` file, or a folder of such files. ``step``/``epoch``
    override what the files say (only for a single checkpoint). ``allow_pickle=True`` unpickles
    files that hold more than tensors and plain data (this runs code from the file) and stores
    what has no plain form with pickle.
    """
    source = os.fspath(src)
    items = _sources(source)
    if len(items) > 1 and (step is not None or epoch is not None):
        raise ValueError(f"{source} holds {len(items)} checkpoints; step/epoch can only be given for one")
    tag_list = [tags] if isinstance(tags, str) else list(tags)
    own = not isinstance(dst, ckptstore.Store)
    store = ckptstore.Store(dst, storage_options=storage_options) if own else dst  # type: ignore[arg-type]
    try:
        out = []
        for kind, path in items:
            fn = _import_hf if kind == "hf" else _import_file
            out.append(fn(store, path, step=step, epoch=epoch, tags=tag_list, allow_pickle=allow_pickle))
        return out
    finally:
        if own:
            store.close()
