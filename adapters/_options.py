"""Validating and normalising Checkpointer options and metric values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["keep_best_option", "metric_values", "positive"]


def keep_best_option(v: Any) -> tuple[Any, ...] | None:
    if v is None:
        return None
    if isinstance(v, str):  # which way is better cannot be guessed from a name (loss: min, accuracy: max)
        raise ValueError(f"keep_best needs a direction: ({v!r}, 'min') or ({v!r}, 'max'), optionally with a count k")
    if not (
        isinstance(v, (tuple, list))
        and 2 <= len(v) <= 3
        and isinstance(v[0], str)
        and v[1] in ("min", "max")
        and (len(v) == 2 or (isinstance(v[2], int) and v[2] >= 1))
    ):
        raise ValueError(f"keep_best must be (metric, 'min' | 'max') or (metric, mode, k), not {v!r}")
    return tuple(v)


def positive(name: str, v: Any, kind: type = int) -> Any:
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) or v <= 0):
        raise ValueError(f"{name} must be a positive {kind.__name__} or None, not {v!r}")
    return v


def metric_values(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor):
            v = v.detach().float().item()
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"metric {k!r} must be a number or a one-element tensor, not {type(v).__name__}") from None
    return out
