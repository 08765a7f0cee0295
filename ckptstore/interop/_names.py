"""The two rules an import uses to find a checkpoint's step and epoch (docs/format.md §20).

**Inside the file** (a dict): the first of these keys whose value is a whole number >= 0 --
an int, a float such as ``4000.0``, or a one-element tensor holding one:

- step: ``global_step``, ``step``, ``iteration``, ``iter``, ``n_iter``, ``steps``
- epoch: ``epoch``, ``current_epoch``

(``total_steps``, ``num_steps``, ``epochs`` are left alone: they usually mean a plan, not progress.)

**In the file name** (without its extension, case ignored): a number right after a keyword,
optionally joined by ``_``, ``-`` or ``=``. Step keywords are ``step``/``steps``,
``iter``/``iters``, ``iteration``/``iterations`` and ``it``, then (only when none of those
occurs) ``checkpoint``/``checkpoints`` and ``ckpt``; epoch keywords are ``epoch``/``epochs``
and ``ep``. Whole words match anywhere, even glued to a word before them (``laststep5`` is step
5, ``global_step=77`` step 77); the abbreviations ``it``, ``ep`` and ``ckpt`` only where a word
starts (at the beginning or after a character that is not a letter: ``ep3_it900`` is epoch 3,
step 900, but ``split3`` and ``deep3`` hold neither). When a keyword occurs more than once the
last one counts. ``final_model.pt`` has no step: the store numbers it after its newest
checkpoint.

What is inside the file wins over the name; a step or epoch the caller passes wins over both.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

STEP_KEYS = ("global_step", "step", "iteration", "iter", "n_iter", "steps")
EPOCH_KEYS = ("epoch", "current_epoch")

_SEP = r"[_\-=]?(\d+)"
_WORD_START = r"(?<![a-z])"
_STEP_RES = (
    re.compile(rf"(?:iterations?|iters?|steps?|{_WORD_START}it){_SEP}", re.IGNORECASE),
    re.compile(rf"(?:checkpoints?|{_WORD_START}ckpt){_SEP}", re.IGNORECASE),
)
_EPOCH_RE = re.compile(rf"(?:epochs?|{_WORD_START}ep){_SEP}", re.IGNORECASE)
_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt", ".tar", ".pkl")


def whole_number(value: Any) -> int | None:
    """``value`` as an int >= 0 when it is one: an int (not a bool), an integral float, or a
    one-element tensor holding such a number; else None."""
    if not isinstance(value, (int, float)) and hasattr(value, "item"):  # a tensor, NumPy array or scalar
        try:
            size = value.numel() if callable(getattr(value, "numel", None)) else value.size
            if size != 1:
                return None
            value = value.item()
        except (AttributeError, RuntimeError, TypeError, ValueError):
            return None
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def _last(regex: re.Pattern[str], stem: str) -> int | None:
    found = regex.findall(stem)
    return int(found[-1]) if found else None


def progress_from_name(name: str | os.PathLike[str]) -> tuple[int | None, int | None]:
    """(step, epoch) that a checkpoint file's name gives (see the module docstring); either may be None."""
    stem = os.path.basename(os.fspath(name))
    if stem.lower().endswith(_EXTENSIONS):
        stem = stem.rsplit(".", 1)[0]
    step = None
    for regex in _STEP_RES:
        step = _last(regex, stem)
        if step is not None:
            break
    return step, _last(_EPOCH_RE, stem)


def first_key(obj: Any, keys: tuple[str, ...]) -> tuple[str | None, int | None]:
    """(key, value) of the first of ``keys`` in the dict ``obj`` holding a whole number; (None, None)."""
    if isinstance(obj, dict):
        for k in keys:
            if k in obj:
                n = whole_number(obj[k])
                if n is not None:
                    return k, n
    return None, None
