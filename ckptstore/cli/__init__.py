"""The ckptstore command: one module per command group (``_main`` builds the parser)."""

from ._main import main

__all__ = ["main"]
