"""One ``torch.save`` file -> one checkpoint: the importer behind ``import_torch_file``,
``import_checkpoint`` and ``ckptstore import`` (docs/format.md §20, "Imported torch.save files").

**Reading.** The file is read with ``torch.load(weights_only=True)`` (plus a short allowlist of
harmless classes, see ``_convert.safe_torch_load``). A file that needs more is refused with a
:class:`PickleNotAllowedError` naming the classes; only ``allow_pickle=True`` unpickles it
(``weights_only=False``, which can run code from the file), and the checkpoint then stores what
has no plain form with pickle.

**Layout.** A Lightning checkpoint (it has ``pytorch-lightning_version``, or ``state_dict`` and
``global_step`` with ``loops``/``callbacks``) is stored as Lightning's own dict, so the Lightning
plugin resumes from it. Anything else is laid out the way the raw-loop ``Checkpointer`` saves, so
``Checkpointer.resume()`` continues from it: the model's weights under ``"model"``, then
``"optimizer"``, ``"scheduler"``, ``"scaler"`` (each found under any of the usual key names, see
``ALIASES``), and every other value under ``"extra"``. A file that is only a ``state_dict`` (or,
with ``allow_pickle=True``, a whole ``nn.Module``) is the model. The keys the file used are
recorded in ``meta.source_keys`` so that ``export_checkpoint`` writes the original layout back.

**Step and epoch**: the rules in ``_names`` (a number inside the file wins over one in its name;
a ``step``/``epoch`` the caller passes wins over both; no step at all: the store numbers it
after its newest checkpoint, with a warning). A ``config``-like key holding plain data becomes
the checkpoint's JSON ``config``; float values whose key names a metric (``val_loss``, ``acc``...)
also become its ``metrics``.
"""

from __future__ import annotations

import math
import os
import pickle
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .._errors import PickleNotAllowedError, UnsupportedFormatError, UnsupportedValueError
from .._errors import warn_user as warn
from .._lazy import lazy
from ..format._info import CheckpointInfo
from ..store._store import Store
from ._convert import from_plain, safe_torch_load, to_plain, why_refused
from ._names import EPOCH_KEYS, STEP_KEYS, first_key, progress_from_name

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch", globals())

ALIASES = {
    "model": (
        "model",
        "model_state_dict",
        "model_state",
        "state_dict",
        "net",
        "network",
        "weights",
        "model_dict",
        "module",
    ),
    "optimizer": ("optimizer", "optimizer_state_dict", "optimizer_state", "optim", "opt", "optim_state_dict"),
    "scheduler": (
        "scheduler",
        "scheduler_state_dict",
        "lr_scheduler",
        "lr_scheduler_state_dict",
        "sched",
        "scheduler_state",
    ),
    "scaler": ("scaler", "grad_scaler", "scaler_state_dict", "amp", "amp_scaler"),
}
CONFIG_KEYS = ("config", "cfg", "args", "hparams", "hyper_parameters", "training_config", "train_config")
_METRIC_HINTS = ("loss", "acc", "score", "metric", "perplexity", "ppl", "f1", "bleu", "rouge", "auc")
_TORCH_MAGIC = (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def require_file(path: str) -> None:
    if not os.path.isfile(path):
        folder = " (it is a folder)" if os.path.isdir(path) else ""
        raise FileNotFoundError(f"no such file to import: {path}{folder}")


def read_torch_file(path: str, *, allow_pickle: bool = False) -> Any:
    """What ``torch.save`` wrote to ``path``, on the CPU, under the module docstring's pickle rule."""
    require_file(path)
    try:
        return safe_torch_load(path, allow_pickle=allow_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        error = e
    with open(path, "rb") as f:
        head = f.read(2)
    if not allow_pickle and head in _TORCH_MAGIC and isinstance(error, pickle.UnpicklingError):
        raise PickleNotAllowedError(
            f"{path} holds more than tensors and plain data ({why_refused(path, error)}). Importing it means "
            "unpickling it, which can run code from the file: pass allow_pickle=True (--allow-pickle) only if "
            "you trust it."
        ) from None
    what = "a damaged torch.save file" if head in _TORCH_MAGIC else "not a torch.save file"
    first = " ".join(str(error).split())[:200] or type(error).__name__
    raise UnsupportedFormatError(f"cannot import {path}: it is {what} ({first})") from None


def is_lightning(obj: Any) -> bool:
    return isinstance(obj, dict) and (
        "pytorch-lightning_version" in obj
        or ("state_dict" in obj and "global_step" in obj and ("loops" in obj or "callbacks" in obj))
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _is_json(v: Any, depth: int = 0) -> bool:
    if depth > 100:
        return False
    if v is None or isinstance(v, (bool, int, float, str)):
        return True
    if type(v) in (list, tuple):
        return all(_is_json(x, depth + 1) for x in v)
    if type(v) is dict:
        return all(isinstance(k, str) and _is_json(x, depth + 1) for k, x in v.items())
    return False


def _metrics(obj: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if isinstance(k, str) and any(h in k.lower() for h in _METRIC_HINTS):
                if isinstance(v, torch.Tensor) and v.numel() == 1 and v.is_floating_point():
                    v = float(v.item())
                if isinstance(v, float) and math.isfinite(v):
                    out[k] = v
    return out


def checkpointer_layout(obj: Any) -> tuple[dict[str, Any], int | None, int | None, Any, dict[str, Any]]:
    """(state in the Checkpointer layout, step, epoch, config, source_keys) from a loaded file."""
    if isinstance(obj, torch.nn.Module):
        return {"model": obj.state_dict()}, None, None, None, {"model": None}
    if _is_state_dict(obj):
        return {"model": dict(obj)}, None, None, None, {"model": None}
    if not isinstance(obj, Mapping):
        raise UnsupportedValueError(
            f"the file holds a {type(obj).__name__}, not a dict of states or a state_dict; load it with torch.load "
            "and save what you need with ckptstore.save()"
        )
    rest = dict(obj)
    state: dict[str, Any] = {}
    source: dict[str, Any] = {}
    for slot, names in ALIASES.items():
        key = next((n for n in names if n in rest), None)
        if key is not None:
            v = rest.pop(key)
            state[slot] = v.state_dict() if callable(getattr(v, "state_dict", None)) else v
            source[slot] = key
    step_key, step = first_key(rest, STEP_KEYS)
    epoch_key, epoch = first_key(rest, EPOCH_KEYS)
    for field, key in (("step", step_key), ("epoch", epoch_key)):
        if key is not None:
            rest.pop(key)
            source[field] = key
    config = None
    key = next((n for n in CONFIG_KEYS if n in rest), None)
    if key is not None:
        plain, _ = to_plain(rest[key])
        if _is_json(plain):  # else it stays in extra, stored like any other value
            config = plain
            rest.pop(key)
            source["config"] = key
    if rest:
        state["extra"] = rest
    return state, step, epoch, config, source


def source_layout(state: Any, info: CheckpointInfo) -> Any:
    """Undo :func:`checkpointer_layout` for an imported checkpoint (``meta.source_keys``): the dict
    with the file's own key names, step, epoch and config put back. Other states are returned as they are."""
    source = info.meta.get("source_keys")
    if not isinstance(source, dict) or not isinstance(state, dict):
        return state
    if source.get("model", "") is None:
        return state.get("model", state)
    out: dict[Any, Any] = {}
    for slot, key in source.items():
        if slot in ALIASES and slot in state:
            out[key] = state[slot]
    values = {"step": info.step, "epoch": info.epoch, "config": info.config}
    for field in ("step", "epoch", "config"):
        if isinstance(source.get(field), str):
            out[source[field]] = values[field]
    extra = state.get("extra")
    if isinstance(extra, dict):
        out.update(extra)
    return out


def save_torch_file(
    store: Store,
    path: str,
    *,
    step: int | None = None,
    epoch: int | None = None,
    tags: Iterable[str] = (),
    allow_pickle: bool = False,
    meta_extra: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Import the ``torch.save`` file at ``path`` into ``store`` as one new checkpoint
    (``meta_extra``: more entries for its ``meta``)."""
    obj = read_torch_file(path, allow_pickle=allow_pickle)
    name = os.path.basename(path)
    name_step, name_epoch = progress_from_name(name)
    meta: dict[str, Any] = {
        "imported_from": os.path.abspath(path),
        "imported_bytes": os.path.getsize(path),
        "name": name,
        **(meta_extra or {}),
    }
    config = None
    if is_lightning(obj):
        state: Any = obj
        in_step, in_epoch = first_key(obj, STEP_KEYS)[1], first_key(obj, EPOCH_KEYS)[1]
        metrics: dict[str, float] = {}
        for cb in (obj.get("callbacks") or {}).values():
            if isinstance(cb, dict) and isinstance(cb.get("monitor"), str) and cb.get("current_score") is not None:
                try:
                    metrics[cb["monitor"]] = float(cb["current_score"])
                except (TypeError, ValueError, RuntimeError):
                    pass
        meta.update(framework="lightning", path=os.path.abspath(path), lightning=obj.get("pytorch-lightning_version"))
    else:
        state, in_step, in_epoch, config, source = checkpointer_layout(obj)
        metrics = _metrics(obj)
        meta.update(framework="torch", source_keys=source)
    plain, fixes = to_plain(state)
    if fixes:
        meta["plain_fixes"] = fixes
    use_step = next((s for s in (step, in_step, name_step) if s is not None), None)
    use_epoch = next((e for e in (epoch, in_epoch, name_epoch) if e is not None), None)
    if use_step is None:
        warn(
            f"{name} records no step (in its contents or its name); it is numbered after the newest "
            "checkpoint in the store (pass step= or --step to choose)"
        )
    return store.save(
        plain,
        step=use_step,
        epoch=use_epoch,
        config=config,
        metrics=metrics,
        tags=tags,
        meta=meta,
        rng=False,
        allow_pickle=allow_pickle,
    )


def import_torch_file(
    path: str | os.PathLike[str],
    uri: Store | str | os.PathLike[str],
    *,
    step: int | None = None,
    epoch: int | None = None,
    tags: Iterable[str] = (),
    allow_pickle: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Import one ``torch.save`` file at ``path`` (``checkpoint_step_4000.pt``, ``final_model.pt``, a
    Lightning ``.ckpt``) into the store at ``uri`` (a :class:`Store` or a location, created if
    needed; ``storage_options``: fsspec options for it), labelled with ``tags``.

    Plain checkpoints are laid out as the raw-loop ``Checkpointer`` saves (``model``,
    ``optimizer``, ``scheduler``, ``scaler``, ``extra``), so ``Checkpointer.resume()`` continues
    from them. ``step`` / ``epoch`` override what the file and its name say. The file is read
    with ``torch.load(weights_only=True)``; ``allow_pickle=True`` unpickles it (this can run code
    from the file: only for files you trust). Returns the new checkpoint's record.
    """
    p = os.fspath(path)
    tag_list = [tags] if isinstance(tags, str) else list(tags)
    if isinstance(uri, Store):
        return save_torch_file(uri, p, step=step, epoch=epoch, tags=tag_list, allow_pickle=allow_pickle)
    require_file(p)  # before creating a store
    with Store(uri, storage_options=storage_options) as store:
        return save_torch_file(store, p, step=step, epoch=epoch, tags=tag_list, allow_pickle=allow_pickle)


def exported_file(state: Any, info: CheckpointInfo) -> Any:
    """The object ``export_checkpoint`` writes with ``torch.save`` for a non-Trainer checkpoint."""
    return source_layout(from_plain(state, info.meta.get("plain_fixes") or []), info)
