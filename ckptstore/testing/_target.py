"""``Target``: where the contract suite puts a store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Target:
    """A fresh, empty location for a store: ``uri`` as ``ckptstore.Store`` takes it, and the
    ``storage_options`` (fsspec keyword arguments) it needs."""

    uri: str
    options: dict[str, Any] = field(default_factory=dict)

    def sub(self, name: str) -> Target:
        """The location ``name`` inside this one (same options)."""
        return Target(self.uri.rstrip("/") + "/" + name, dict(self.options))
