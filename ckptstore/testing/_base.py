"""What every part of the contract shares: the settings a subclass may change and the fixtures."""

from __future__ import annotations

from typing import Any

import pytest

from ..storage._backend import Backend
from ..storage._open import open_backend
from ..store._store import Store


class ContractBase:
    """Settings (class attributes) and fixtures of :class:`~ckptstore.testing.BackendContract`."""

    #: False for a server that silently ignores write preconditions (rclone's S3 server): a
    #: create-only write over an existing key then overwrites it (harmless: keys are content-named)
    ENFORCES_CREATE_ONLY = True
    #: False when create-only writes are not enforced for uploads in parts (fake-gcs-server
    #: ignores preconditions on resumable uploads; real GCS does not)
    ENFORCES_CREATE_ONLY_IN_PARTS = True
    #: the part size for the multipart test (S3's smallest: 5 MiB; GCS: a multiple of 256 KiB)
    PART_SIZE = 5 << 20
    #: how far the storage's clock (``mtime``) may be from this machine's, in seconds
    CLOCK_SKEW = 300.0
    #: retries per storage request (small: a contract failure should surface fast)
    RETRIES = 1

    @pytest.fixture
    def target(self) -> Any:
        pytest.fail(
            "subclass BackendContract and give it a `target` fixture that returns a fresh, empty "
            "ckptstore.testing.Target (a store URI and its storage_options)"
        )

    def open_backend(self, target: Any) -> Backend:
        """A new client for ``target``; override when the backend is opened in another way."""
        return open_backend(target.uri, target.options, retries=self.RETRIES)

    @pytest.fixture
    def backend(self, target: Any) -> Backend:
        return self.open_backend(target)

    @pytest.fixture
    def store(self, target: Any) -> Store:
        return Store(target.uri, storage_options=target.options, retries=self.RETRIES, workers=4)
