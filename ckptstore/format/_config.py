"""Configs as plain data: what ``save(config=...)`` turns into JSON before encoding.

A training config is often an ``argparse.Namespace`` or a dataclass instance; both are plain
data with attribute access, so they are stored as the dict of their fields (nested ones too,
inside dicts, lists and tuples). Everything else is left as it is for the encoder, which refuses
what JSON cannot hold without pickle.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

#: nesting beyond this is left to the encoder (which reports cycles and depth itself)
_MAX_DEPTH = 100


def config_as_data(config: Any, _depth: int = 0) -> Any:
    """``config`` with every ``argparse.Namespace`` and dataclass instance in it made a dict."""
    if _depth > _MAX_DEPTH:
        return config
    c = config
    if isinstance(c, argparse.Namespace):
        c = dict(vars(c))
    elif dataclasses.is_dataclass(c) and not isinstance(c, type):
        c = {f.name: getattr(c, f.name) for f in dataclasses.fields(c)}
    if type(c) is dict:
        return {k: config_as_data(v, _depth + 1) for k, v in c.items()}
    if type(c) is list:
        return [config_as_data(v, _depth + 1) for v in c]
    if type(c) is tuple:
        return tuple(config_as_data(v, _depth + 1) for v in c)
    return c
