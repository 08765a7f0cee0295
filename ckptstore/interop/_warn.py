"""Warnings that point at the caller's line, not at ckptstore's internals."""

from __future__ import annotations

import os
import sys
import warnings

from .._errors import CkptstoreWarning

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def warn(message: str, category: type[Warning] = CkptstoreWarning) -> None:
    """``warnings.warn`` with the stack level of the first frame outside the ckptstore package."""
    level = 2  # 1 is this function, 2 its caller
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
