"""Config drift: what changed between the config a checkpoint recorded and the current one.

Keys are compared flattened (``optim.lr``). Each change is classed by its last name part:
*risky* (the resumed run is probably not the run that was checkpointed: batch size, model,
sequence length, architecture, dataset, precision...), *deliberate* (commonly changed on
purpose when resuming: learning rate, epochs, step budget, logging and eval cadence), or
*other*.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ckptstore

__all__ = ["ConfigDrift", "ConfigDriftWarning", "config_drift", "plain_config"]


class ConfigDriftWarning(ckptstore.CkptstoreWarning):
    """The current config differs from the one recorded in the resumed checkpoint."""


RISKY = (
    r"(per_device_(train_|eval_)?)?(micro_|global_|train_|eval_)?batch_size",
    r"bs",
    r"gradient_accumulation(_steps)?",
    r"grad_accum(_steps)?",
    r"accumulate_grad_batches",
    r"model(_name|_id|_type|_name_or_path|_path)?",
    r"arch(itecture)?",
    r"base_model(_name_or_path)?",
    r"tokenizer(_name|_name_or_path|_path)?",
    r"vocab_size",
    r"(max_)?(seq|sequence)_len(gth)?",
    r"(max_)?seq_length",
    r"block_size",
    r"context_(length|len|size)",
    r"max_length",
    r"max_position_embeddings",
    r"n_ctx",
    r"n_positions",
    r"hidden_size",
    r"n_embd",
    r"d_model",
    r"n_layers?",
    r"num_(hidden_)?layers",
    r"n_heads?",
    r"num_(attention_)?heads",
    r"intermediate_size",
    r"d_ff",
    r"ffn_dim",
    r"lora_r",
    r"lora_alpha",
    r"target_modules",
    r"dataset(_name|_path)?",
    r"data(_dir|_path)?",
    r"train_file",
    r"dtype",
    r"precision",
    r"(b)?f16",
    r"mixed_precision",
    r"world_size",
    r"num_(gpus|devices|nodes)",
)
DELIBERATE = (
    r"(max_|base_|peak_|min_)?(lr|learning_rate)",
    r"(num_|max_|total_)?epochs",
    r"num_train_epochs",
    r"(max|total|num_train|train)_steps",
    r"total_steps",
    r"warmup(_steps|_ratio)?",
    r"weight_decay",
    r"(lr_)?scheduler(_type)?",
    r"lr_schedule",
    r"(save|eval|log|logging)_(steps|every|interval|strategy|freq)",
    r"(eval|log|save)_every(_steps)?",
    r"output_dir",
    r"run_name",
    r"logging_dir",
    r"report_to",
    r"num_workers",
    r"dataloader_num_workers",
    r"patience",
    r"early_stopping(_patience)?",
    r"gradient_clip(_val|ping)?",
    r"(max_)?grad_norm",
    r"clip(_grad)?(_norm)?",
)
_RISKY_RE = re.compile("^(" + "|".join(RISKY) + ")$", re.IGNORECASE)
_DELIBERATE_RE = re.compile("^(" + "|".join(DELIBERATE) + ")$", re.IGNORECASE)
_MISSING = object()


@dataclass(frozen=True)
class ConfigDrift:
    """Changed keys as ``{key: (recorded, current)}``; a key only on one side has ``None``
    on the other and is listed in ``added`` / ``removed``."""

    risky: Mapping[str, tuple[Any, Any]]
    deliberate: Mapping[str, tuple[Any, Any]]
    other: Mapping[str, tuple[Any, Any]]
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.risky or self.deliberate or self.other)

    @property
    def changed(self) -> dict[str, tuple[Any, Any]]:
        return {**self.risky, **self.deliberate, **self.other}

    def describe(self) -> str:
        def fmt(d: Mapping[str, tuple[Any, Any]]) -> str:
            parts = []
            for k, (a, b) in d.items():
                if k in self.added:
                    parts.append(f"{k} (new: {_short(b)})")
                elif k in self.removed:
                    parts.append(f"{k} (was {_short(a)}, now unset)")
                else:
                    parts.append(f"{k} {_short(a)} -> {_short(b)}")
            return ", ".join(parts)

        lines = []
        if self.risky:
            lines.append(f"RISKY (the resumed run may not match the checkpoint): {fmt(self.risky)}")
        if self.deliberate:
            lines.append(f"probably deliberate: {fmt(self.deliberate)}")
        if self.other:
            lines.append(f"other: {fmt(self.other)}")
        return "; ".join(lines)


def _short(v: Any, n: int = 60) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def plain_config(config: Any, _depth: int = 0) -> Any:
    """A JSON-like copy of a config: dataclasses, argparse Namespaces, pydantic models and
    objects with ``to_dict()`` become dicts; paths and enums their string/value; other objects
    their ``repr``. (The store refuses values that are not plain data.)"""
    if _depth > 50:
        return repr(config)
    c = config
    if c is None or isinstance(c, (bool, int, str)):
        return c
    if isinstance(c, float):
        return c if math.isfinite(c) else repr(c)
    if isinstance(c, enum.Enum):
        return plain_config(c.value, _depth + 1)
    if isinstance(c, os.PathLike):
        return os.fspath(c)
    if dataclasses.is_dataclass(c) and not isinstance(c, type):
        c = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    elif hasattr(c, "model_dump") and callable(c.model_dump):
        c = c.model_dump()
    elif hasattr(c, "to_dict") and callable(c.to_dict):
        c = c.to_dict()
    elif type(c).__name__ == "Namespace" and hasattr(c, "__dict__"):
        c = vars(c)
    if isinstance(c, Mapping):
        return {str(k): plain_config(v, _depth + 1) for k, v in c.items()}
    if isinstance(c, (list, tuple, set, frozenset)):
        items = sorted(c, key=repr) if isinstance(c, (set, frozenset)) else c
        return [plain_config(v, _depth + 1) for v in items]
    return repr(c)


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix or "config": d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _same(a: Any, b: Any) -> bool:
    if (
        isinstance(a, (int, float))
        and isinstance(b, (int, float))
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def classify(key: str, risky: Iterable[str] = (), deliberate: Iterable[str] = ()) -> str:
    parts = key.split(".")
    name = parts[-1]
    if key in risky or name in risky:
        return "risky"
    if key in deliberate or name in deliberate:
        return "deliberate"
    names = [name] + (["_".join(parts[-2:])] if len(parts) > 1 else [])  # model.name -> model_name
    if any(_RISKY_RE.match(n) for n in names):
        return "risky"
    if any(_DELIBERATE_RE.match(n) for n in names):
        return "deliberate"
    return "other"


def config_drift(
    recorded: Any,
    current: Any,
    *,
    risky: Iterable[str] = (),
    deliberate: Iterable[str] = (),
    ignore: Iterable[str] = (),
) -> ConfigDrift:
    """Compare two configs (see the module docstring). ``risky`` / ``deliberate`` add key names
    (last part or full dotted key) to those classes; ``ignore`` skips keys."""
    a = _flatten(plain_config(recorded))
    b = _flatten(plain_config(current))
    risky, deliberate, ignore = set(risky), set(deliberate), set(ignore)
    groups: dict[str, dict[str, tuple[Any, Any]]] = {"risky": {}, "deliberate": {}, "other": {}}
    added, removed = [], []
    for key in sorted(set(a) | set(b)):
        if key in ignore or key.rsplit(".", 1)[-1] in ignore:
            continue
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va is not _MISSING and vb is not _MISSING and _same(va, vb):
            continue
        if va is _MISSING:
            added.append(key)
        if vb is _MISSING:
            removed.append(key)
        groups[classify(key, risky, deliberate)][key] = (None if va is _MISSING else va, None if vb is _MISSING else vb)
    return ConfigDrift(groups["risky"], groups["deliberate"], groups["other"], tuple(added), tuple(removed))
