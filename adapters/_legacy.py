"""Importing plain ``torch.save`` checkpoints (``checkpoint_step_4000.pt``, ``final_model.pt``).

This is the one place where ckptstore reads a pickle, and it does so with
``torch.load(weights_only=True)`` (tensors, numbers, strings and containers only) unless the
caller passes ``weights_only=False`` explicitly for a file they trust.

The file's contents are laid out the way :class:`~ckptstore.adapters.loop.Checkpointer` saves,
so a run can resume from an imported checkpoint: the model's weights under ``"model"``, the
optimizer under ``"optimizer"``, the scheduler under ``"scheduler"``, the AMP scaler under
``"scaler"``, and every other value under ``"extra"``. A file holding only tensors is taken as
a model ``state_dict``. Step and epoch come from the contents (``step``, ``global_step``,
``iteration``, ``epoch``...), else from the file name (``step_4000``, ``iter-12``,
``checkpoint-500``, ``epoch3``), else the store numbers it after its newest checkpoint.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any, Iterable, Mapping

import torch

import ckptstore
from ckptstore import CheckpointInfo, PickleNotAllowedError, Store

from ._drift import plain_config
from ._warn import warn

__all__ = ["import_torch_file", "parse_step_from_name", "normalize_legacy"]

ALIASES = {
    "model": ("model", "model_state_dict", "model_state", "state_dict", "net", "network", "weights",
              "model_dict"),
    "optimizer": ("optimizer", "optimizer_state_dict", "optimizer_state", "optim", "opt", "optim_state_dict"),
    "scheduler": ("scheduler", "scheduler_state_dict", "lr_scheduler", "lr_scheduler_state_dict", "sched",
                  "scheduler_state"),
    "scaler": ("scaler", "grad_scaler", "scaler_state_dict", "amp", "amp_scaler"),
}
STEP_KEYS = ("step", "global_step", "iteration", "iter", "steps", "num_steps", "n_iter", "total_steps_done")
EPOCH_KEYS = ("epoch", "epochs", "current_epoch")
CONFIG_KEYS = ("config", "cfg", "args", "hparams", "hyper_parameters", "training_config", "train_config")

_STEP_RES = (
    re.compile(r"(?<![a-z])(?:global[_-]?step|steps?|iters?|iterations?|it)[_\-=]?(\d+)", re.IGNORECASE),
    re.compile(r"(?<![a-z])(?:checkpoint|ckpt)[_\-=]?(\d+)", re.IGNORECASE),
)
_EPOCH_RE = re.compile(r"(?<![a-z])(?:epochs?|ep)[_\-=]?(\d+)", re.IGNORECASE)


def parse_step_from_name(name: str) -> tuple[int | None, int | None]:
    """(step, epoch) read from a file name; either may be None."""
    stem = os.path.basename(name)
    stem = re.sub(r"\.(pt|pth|bin|ckpt|tar|pkl)$", "", stem, flags=re.IGNORECASE)
    step = epoch = None
    for rx in _STEP_RES:
        m = rx.search(stem)
        if m:
            step = int(m.group(1))
            break
    m = _EPOCH_RE.search(stem)
    if m:
        epoch = int(m.group(1))
    return step, epoch


def _as_int(v: Any) -> int | None:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return v if isinstance(v, int) and v >= 0 else None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def normalize_legacy(obj: Any) -> tuple[dict[str, Any], int | None, int | None, Any]:
    """(state in the Checkpointer layout, step, epoch, config) from a loaded ``torch.save`` object."""
    if isinstance(obj, torch.nn.Module):
        return {"model": obj.state_dict()}, None, None, None
    if _is_state_dict(obj):
        return {"model": dict(obj)}, None, None, None
    if not isinstance(obj, Mapping):
        raise ckptstore.UnsupportedValueError(
            f"the file holds a {type(obj).__name__}, not a dict of states or a state_dict; load it with torch.load "
            "and save what you need with ckptstore.save()")
    rest = dict(obj)
    state: dict[str, Any] = {}
    for target, names in ALIASES.items():
        for n in names:
            if n in rest:
                v = rest.pop(n)
                state[target] = v.state_dict() if hasattr(v, "state_dict") and not isinstance(v, Mapping) else v
                break
    step = epoch = None
    for n in STEP_KEYS:
        if n in rest and _as_int(rest[n]) is not None:
            step = _as_int(rest.pop(n))
            break
    for n in EPOCH_KEYS:
        if n in rest and _as_int(rest[n]) is not None:
            epoch = _as_int(rest.pop(n))
            break
    config = None
    for n in CONFIG_KEYS:
        if n in rest:
            config = plain_config(rest.pop(n))
            break
    if rest:
        state["extra"] = rest
    return state, step, epoch, config


def import_torch_file(
    path: str | os.PathLike[str],
    uri: str | os.PathLike[str] | Store,
    *,
    step: int | None = None,
    epoch: int | None = None,
    weights_only: bool = True,
    raw: bool = False,
    tags: Iterable[str] = ("imported",),
    storage_options: Mapping[str, Any] | None = None,
) -> CheckpointInfo:
    """Import one ``torch.save`` file into the store at ``uri`` as a new checkpoint.

    ``weights_only=False`` unpickles arbitrary Python objects (which can run code): pass it only
    for a file you trust. ``raw=True`` stores the loaded object as it is instead of in the
    Checkpointer layout. ``step`` / ``epoch`` override what the file says. A name containing
    "final" adds the tag ``final``. Returns the new checkpoint's info.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no such file to import: {p}" + (" (it is a folder)" if os.path.isdir(p) else ""))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as e:
        if not weights_only:
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PickleNotAllowedError(
            f"{p} holds Python objects beyond tensors and plain data, which loading with weights_only=True "
            f"refuses ({first}). If you trust this file, import it with weights_only=False (unpickling can run "
            "code).") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise ckptstore.IntegrityError(f"{p} is not a readable torch.save file: {e}") from None
    name_step, name_epoch = parse_step_from_name(p)
    if raw:
        state, c_step, c_epoch, config = obj, None, None, None
    else:
        state, c_step, c_epoch, config = normalize_legacy(obj)
    use_step = step if step is not None else (c_step if c_step is not None else name_step)
    use_epoch = epoch if epoch is not None else (c_epoch if c_epoch is not None else name_epoch)
    if use_step is None:
        warn(f"ckptstore: {os.path.basename(p)} records no step; it is numbered after the store's newest "
                      "checkpoint (pass step= to choose)")
    all_tags = list(tags)
    if "final" in os.path.basename(p).lower() and "final" not in all_tags:
        all_tags.append("final")
    meta = {"imported_from": os.path.abspath(p), "imported_bytes": os.path.getsize(p)}
    own = not isinstance(uri, Store)
    store = uri if isinstance(uri, Store) else Store(uri, storage_options=storage_options)
    try:
        return store.save(state, step=use_step, epoch=use_epoch, config=config, tags=all_tags, meta=meta,
                          rng=False, progress=False)
    finally:
        if own:
            store.close()
