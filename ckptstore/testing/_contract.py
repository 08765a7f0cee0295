"""``BackendContract``: every part of the contract in one class to subclass."""

from __future__ import annotations

from ._cycle import StoreContract
from ._keys import KeyContract
from ._sinks import SinkContract


class BackendContract(KeyContract, SinkContract, StoreContract):
    """The tests every storage backend passes. Subclass it as ``Test<Name>`` with a ``target``
    fixture (a fresh, empty :class:`~ckptstore.testing.Target`); pytest collects the tests.

    Settings (class attributes) for what the server, not the backend, does:
    ``ENFORCES_CREATE_ONLY``, ``ENFORCES_CREATE_ONLY_IN_PARTS``, ``PART_SIZE``, ``CLOCK_SKEW``,
    ``RETRIES`` (see ``ContractBase``). Override ``open_backend(target)`` when the backend is not
    the one ``ckptstore.Store`` opens for the URI.

    The parts: ``KeyContract`` (bytes at keys, create-only writes, parts, mtime, the capability
    flags), ``SinkContract`` (the save pipeline's writes, batched local writer included, keep the
    promises of ``Backend.write``) and ``StoreContract`` (save, load, list, forget, reopen).
    """
