"""S3 transfers without intermediate copies (storage/_s3io.py), on a real moto server.

The body object is both a seekable file (what botocore reads for the length and checksums) and
an aiohttp payload (what goes to the socket, straight from the caller's buffers); GETs fill the
caller's buffer and fetch again a body that breaks off.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch

import ckptstore
from ckptstore.storage._open import open_backend
from ckptstore.storage._s3io import view_body

from . import cloudservers as cs
from .faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(120)


def _parts() -> list[memoryview]:
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, n, dtype=np.uint8) for n in (5, 300_000, 1, 70_000)]
    return [memoryview(a) for a in arrays]


def test_body_reads_seeks_and_slices_like_the_joined_bytes() -> None:
    parts = _parts()
    whole = b"".join(parts)
    body = view_body(parts)
    assert len(body) == len(whole) == body.size
    assert body.read(3) == whole[:3] and body.tell() == 3
    assert body.read(10) == whole[3:13]  # across the first part's end
    assert body.read() == whole[13:] and body.read(5) == b""
    assert body.seek(-4, 2) == len(whole) - 4 and body.read() == whole[-4:]
    body.seek(0)
    chunks = iter(lambda: body.read(1 << 16), b"")  # botocore's checksum loop
    assert b"".join(chunks) == whole
    sub = body[299_000:300_010]  # s3fs cuts multipart uploads by slicing
    assert len(sub) == 1010 and sub.read() == whole[299_000:300_010]
    assert asyncio.run(body.as_bytes()) == whole
    with pytest.raises(TypeError):
        body[::2]


def test_body_sends_exactly_the_bytes_in_slices() -> None:
    parts = _parts()
    whole = b"".join(parts)
    sent: list[bytes] = []

    class Writer:
        async def write(self, chunk: Any) -> None:
            sent.append(bytes(chunk))

    asyncio.run(view_body(parts).write(Writer()))
    assert b"".join(sent) == whole and len(sent) > 2  # several writes, not one huge one
    sent.clear()
    asyncio.run(view_body(parts).write_with_length(Writer(), 1000))
    assert b"".join(sent) == whole[:1000]


@pytest.fixture(scope="module")
def moto() -> cs.Server:
    return cs.shared("moto")


def _state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(1)
    return {"big": torch.randn(600_000, generator=g), "small": torch.randn(300, generator=g), "n": 3}


def test_s3_store_uses_the_zero_copy_paths_and_round_trips(moto: cs.Server) -> None:
    t = cs.new_s3_bucket(moto.url)
    assert open_backend(t.uri, t.options).supports_zero_copy
    state = _state()
    ckptstore.Store(t.uri, storage_options=t.options, compression=None).save(state, step=1)
    back = ckptstore.Store(t.uri, storage_options=t.options).load()
    assert torch.equal(back["big"], state["big"]) and torch.equal(back["small"], state["small"]) and back["n"] == 3


def test_a_get_that_breaks_off_is_fetched_again(moto: cs.Server) -> None:
    t = cs.new_s3_bucket(moto.url)
    state = _state()
    ckptstore.Store(t.uri, storage_options=t.options, compression=None).save(state, step=1)
    proxy = FaultProxy(cs.HOST, moto.port).start()
    try:
        is_object_get = lambda r: r.method == "GET" and "/objects/" in r.target  # noqa: E731
        fault = proxy.add("truncate", when=is_object_get, times=1)
        opts = dict(t.options, endpoint_url=proxy.url)
        back = ckptstore.Store(t.uri, storage_options=opts, retries=2).load()
        assert fault.fired
        gets = [r.target for r in proxy.requests if is_object_get(r)]
        assert len(gets) == len(set(gets)) + 1  # the broken one, once more
        assert torch.equal(back["big"], state["big"]) and torch.equal(back["small"], state["small"])
        # with no retries the broken body is an error, never wrong data
        proxy.reset()
        proxy.add("truncate", when=is_object_get, times=None)
        with pytest.raises(ckptstore.CkptstoreError):
            ckptstore.Store(t.uri, storage_options=opts, retries=0).load()
    finally:
        proxy.stop()
