"""The backend contract suite, for your own pytest run (``pip install pytest``; not imported by ``import ckptstore``).

Subclass :class:`BackendContract` in a test module, name the class ``Test...`` and give it a
``target`` fixture: a fresh, empty location (:class:`Target`: a URI ``ckptstore.Store`` accepts
and its ``storage_options``). Every test then runs against it::

    from ckptstore.testing import BackendContract, Target
    class TestMyFS(BackendContract):
        @pytest.fixture
        def target(self, tmp_path): return Target(f"myfs://bucket/{tmp_path.name}", {"token": "..."})

Set ``ENFORCES_CREATE_ONLY = False`` for a server that ignores write preconditions; docs/backends.md has the rest.
"""

from ._contract import BackendContract
from ._target import Target

__all__ = ["BackendContract", "Target"]
