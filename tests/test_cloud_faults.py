"""Faults injected between ckptstore and real S3 (moto) / GCS (fake-gcs-server) servers.

A fault-injection proxy (faultproxy.py) sits in front of the server. At every request index of a
save, each kind of fault: the save either succeeds or raises a ckptstore error, and afterwards
the store is consistent (every listed checkpoint loads, bit-exact), the earlier checkpoint is
intact, and the next save works. The ambiguous write (the PUT lands, the client sees an error,
retries, and is refused with 412) must be a success. Loads either return the exact state or
raise. Retries are bounded (counted in requests, not timed).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import ckptstore

from . import cloudservers as cs
from .faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(240)

SERVERS = {"s3": ("moto", cs.new_s3_bucket), "gcs": ("fake-gcs", cs.new_gcs_bucket)}


class Rig:
    """A bucket on a real server, reachable directly and through a fault proxy."""

    def __init__(self, kind: str) -> None:
        server_kind, make = SERVERS[kind]
        self.kind = kind
        self.server = cs.shared(server_kind)
        self.bucket = make(self.server.url)
        self.proxy = FaultProxy(cs.HOST, self.server.port).start()
        self.n = 0

    def fresh(self) -> cs.Target:
        self.n += 1
        return self.bucket.sub(f"s{self.n}")

    def direct(self, t: cs.Target) -> ckptstore.Store:
        return ckptstore.Store(t.uri, storage_options=t.options, retries=2, workers=2)

    def proxied(self, t: cs.Target, retries: int) -> ckptstore.Store:
        opts = dict(t.options, endpoint_url=self.proxy.url)
        return ckptstore.Store(t.uri, storage_options=opts, retries=retries, workers=2)


@pytest.fixture(params=sorted(SERVERS))
def rig(request: Any) -> Iterator[Rig]:
    r = Rig(request.param)
    yield r
    r.proxy.stop()


def _state(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "frozen": torch.arange(20_000, dtype=torch.float32),  # packed, shared by both saves
        "big": torch.randn(300_000, generator=g),  # 1.2 MB: an object of its own
        "small": torch.randn(100, generator=g),
        "step": seed,
    }


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in ("frozen", "big", "small")) and a["step"] == b["step"]


def _arm(proxy: FaultProxy, action: str, nth: int) -> Any:
    """Fault request ``nth`` and, once, the same request sent again right away: aiohttp
    silently resends an idempotent request (PUT, GET) whose connection dropped, and the fault
    must reach ckptstore's own handling."""
    hit: dict[str, Any] = {}

    def pick(req: Any) -> bool:
        if req.index == nth:
            hit["req"] = (req.method, req.target)
            return True
        if hit.get("req") == (req.method, req.target) and not hit.get("again"):
            hit["again"] = True
            return True
        return False

    return proxy.add(action, when=pick, times=None)


class Checker:
    """Reads the store directly (no proxy) and checks what must hold after every fault."""

    def __init__(self, rig: Rig, t: cs.Target) -> None:
        self.store = rig.direct(t)
        self.expected: dict[int, dict[str, Any]] = {0: _state(0)}
        self.store.save(self.expected[0], step=0)
        self.last_good = 0

    def after(self, step: int, state: dict[str, Any], ok: bool, what: str) -> None:
        self.expected[step] = state
        steps = [i.step for i in self.store.list()]
        assert self.last_good in steps, f"{what} lost the earlier checkpoint"
        assert _same(self.store.load(self.last_good), self.expected[self.last_good])
        if ok:
            assert step in steps, f"{what}: the save returned but its checkpoint is not listed"
        if step in steps:  # committed (also when the error came after the manifest landed)
            assert _same(self.store.load(step), state), f"{what}: the checkpoint loads wrong data"
            self.last_good = step


@pytest.mark.parametrize("action", ["drop_before", "drop_after", "status_before", "status_after", "truncate"])
def test_fault_at_every_request_of_a_save(rig: Rig, action: str) -> None:
    t = rig.fresh()
    check = Checker(rig, t)
    outcomes = []
    for index in range(1, 60):
        state = _state(index)
        rig.proxy.reset()
        fault = _arm(rig.proxy, action, index)
        try:  # a new Store each time, as after a restart; no retries: every fault reaches the save
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ckptstore.CkptstoreWarning)
                rig.proxied(t, retries=0).save(state, step=index)
            ok = True
            # a fault after the commit may only cost the retention step, and says so
            for w in caught:
                assert issubclass(w.category, ckptstore.CkptstoreWarning)
                assert "the checkpoint was saved, but applying the retention policy failed" in str(w.message)
        except ckptstore.CkptstoreError:
            ok = False
        outcomes.append(ok)
        if not fault.fired:  # the save needed fewer requests than index: every index was covered
            assert ok
            break
        check.after(index, state, ok, f"{action} at request {index}")
    else:
        pytest.fail("the save never ran out of requests")
    assert len(outcomes) > 5
    assert not all(outcomes), f"{action} never made a save fail"


@pytest.mark.parametrize("action", ["drop_after", "status_after", "truncate"])
def test_ambiguous_write_is_a_success(rig: Rig, action: str) -> None:
    """The write lands, its answer is lost; the retry is refused (412): the save succeeds."""
    t = rig.fresh()
    check = Checker(rig, t)
    refused = 0
    for nth_write in range(1, 12):
        state = _state(nth_write)
        rig.proxy.reset()
        count = {"n": 0}

        def nth_write_request(req: Any, count: dict[str, int] = count, nth: int = nth_write) -> bool:
            if req.method in ("PUT", "POST"):
                count["n"] += 1
                return count["n"] == nth
            return False

        fault = rig.proxy.add(action, when=nth_write_request)
        info = rig.proxied(t, retries=2).save(state, step=nth_write)
        if not fault.fired:
            break
        refused += sum(1 for r in rig.proxy.requests if r.status == 412)
        assert info.step == nth_write
        check.after(nth_write, state, True, f"{action} on write {nth_write}")
    assert nth_write > 3  # at least two objects and the manifest were each hit
    assert refused >= 1  # the 412 path (create-only refused after our own write landed) ran


@pytest.mark.parametrize("action", ["drop_after", "status_after", "truncate"])
def test_fault_at_every_request_of_a_load(rig: Rig, action: str) -> None:
    t = rig.fresh()
    b = _state(2)
    rig.direct(t).save(b, step=2)
    for index in range(1, 40):
        rig.proxy.reset()
        fault = rig.proxy.add(action, nth=index)
        try:
            state = rig.proxied(t, retries=0).load()
            assert _same(state, b)  # never wrong data
        except ckptstore.CkptstoreError:
            pass
        if not fault.fired:
            break
    else:
        pytest.fail("the load never ran out of requests")


def test_retries_are_bounded(rig: Rig) -> None:
    """A server that always answers 503: the save fails with StorageError after a bounded number
    of requests (retries=1: each request is tried at most twice by each retrying layer)."""
    t = rig.fresh()
    rig.proxy.add("status_before", times=None)
    with pytest.raises(ckptstore.StorageError) as e:
        rig.proxied(t, retries=1).save(_state(1), step=1)
    assert t.uri.split("/")[2] in str(e.value)  # names the bucket
    assert 2 <= rig.proxy.count <= 8, rig.proxy.count


def test_dead_endpoint_fails_with_a_clear_error() -> None:
    port = cs.free_port()  # nothing listens there
    opts = cs.s3_options(f"http://{cs.HOST}:{port}")
    with pytest.raises(ckptstore.StorageError, match="s3://nobucket/run"):
        ckptstore.Store("s3://nobucket/run", storage_options=opts, retries=0).save({"w": torch.ones(2)})
    with pytest.raises(ckptstore.StorageError, match="gs://nobucket/run"):
        ckptstore.Store(
            "gs://nobucket/run", storage_options=cs.gcs_options(f"http://{cs.HOST}:{port}"), retries=0
        ).list()


def test_a_server_that_never_answers_fails_after_a_bounded_number_of_requests() -> None:
    """It accepts the connection and never replies. Each request waits ``read_timeout`` (20 s by
    default, botocore's is 60) and is retried by botocore and by s3fs; then the store used to ask
    what its root is, which waited as long again (6.4 minutes in all with the defaults). Counted
    in requests, with a 1 s timeout so the test is quick."""
    target = cs.new_s3_bucket(cs.shared("moto").url)
    proxy = FaultProxy(cs.HOST, cs.shared("moto").port).start()
    try:
        proxy.add("delay", delay=4, times=None)
        opts = dict(target.options, endpoint_url=proxy.url, config_kwargs={"read_timeout": 1})
        with pytest.raises(ckptstore.StorageError, match="Read timeout") as e:
            ckptstore.Store(target.uri, storage_options=opts, retries=1).list()
        assert target.uri in str(e.value)
        # botocore's 2 tries of the config's GET (s3fs's retry loops, nested, made it 8) and no
        # HEAD of the root after them
        assert proxy.count == 2 and all(r.method == "GET" for r in proxy.requests), proxy.requests
    finally:
        proxy.stop()
    store = ckptstore.Store(target.uri, storage_options=target.options)
    assert store.backend.fs.config_kwargs["read_timeout"] == 20  # the default, set by ckptstore
    assert store.backend.fs.config_kwargs["connect_timeout"] == 10


def test_missing_bucket_says_create_it() -> None:
    opts = cs.s3_options(cs.shared("moto").url)
    with pytest.raises(ckptstore.StorageError, match="does not exist"):
        ckptstore.Store("s3://no-such-bucket-here/run", storage_options=opts, retries=0).save({"w": torch.ones(2)})
