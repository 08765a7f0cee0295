"""Warnings that point at the user's line, not at ckptstore's internals."""

from __future__ import annotations

import os
import sys
import warnings

import ckptstore

_DIRS = tuple(os.path.dirname(os.path.abspath(p)) + os.sep for p in (__file__, ckptstore.__file__))


def warn(message: str, category: type[Warning] = ckptstore.CkptstoreWarning) -> None:
    """``warnings.warn`` with the stack level of the first caller outside ckptstore."""
    level = 2  # 1 is this function, 2 its caller
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_DIRS):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
