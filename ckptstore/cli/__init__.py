"""The ckptstore command: one module per command group (``_main`` builds the parser)."""

from ._main import main, run

__all__ = ["main", "run"]
