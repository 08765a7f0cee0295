"""Modules imported on first use.

``torch`` and ``numpy`` take seconds to import, and the read-only commands (``ckptstore ls``,
``show``, ``du``, ``gc --dry-run``) never touch them. A module that needs them writes::

    if TYPE_CHECKING:
        import torch
    else:
        torch = lazy("torch", globals())

The first attribute read (``torch.Tensor``) imports the module and puts it in place of the
stand-in, so every later use is the module itself at full speed. Nothing may read such a name
while its module is being imported (no ``torch.float32`` in a module-level table).
"""

from __future__ import annotations

import importlib
from typing import Any


class _Lazy:
    __slots__ = ("_alias", "_name", "_namespace")

    def __init__(self, name: str, namespace: dict[str, Any], alias: str) -> None:
        self._name = name
        self._namespace = namespace
        self._alias = alias

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self._name)
        self._namespace[self._alias] = module
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"


def lazy(name: str, namespace: dict[str, Any], alias: str | None = None) -> Any:
    """A stand-in for module ``name``, bound in ``namespace`` as ``alias`` (default: the name's
    last part), that imports the module on its first attribute read."""
    return _Lazy(name, namespace, alias or name.rsplit(".", 1)[-1])
