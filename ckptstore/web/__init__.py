"""The dashboard of a run's checkpoints: a web page (served on 127.0.0.1 or written as one file)
and the comparison of two checkpoints. Public: ``ckptstore.dashboard``, ``ckptstore.diff_checkpoints``."""

from __future__ import annotations

from ._api import dashboard, diff_checkpoints
from ._diff import CheckpointDiff, LayerChange, TensorChange
from ._server import DashboardServer

__all__ = ["CheckpointDiff", "DashboardServer", "LayerChange", "TensorChange", "dashboard", "diff_checkpoints"]
