"""The backend contract suite for your own pytest run (needs pytest; ``import ckptstore`` never loads it).

Subclass :class:`BackendContract` as a ``Test...`` class with a ``target`` fixture that returns a
fresh, empty :class:`Target` (a URI ``ckptstore.Store`` accepts and its ``storage_options``)::

    class TestMyFS(BackendContract):
        @pytest.fixture
        def target(self):
            return Target(f"myfs://bucket/{uuid.uuid4().hex}", {"token": "..."})

pytest then runs every test against it. Settings and the flags: docs/backends.md.
"""

from ._contract import BackendContract
from ._target import Target

__all__ = ["BackendContract", "Target"]
