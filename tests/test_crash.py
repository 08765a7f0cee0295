"""kill -9 a saving process at random moments: the store always loads, the newest checkpoint is
whole, and it is no older than the last save that returned."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import torch

import ckptstore

HERE = os.path.dirname(__file__)


def _check_whole(uri: str, info: ckptstore.CheckpointInfo) -> None:
    state = ckptstore.load(uri, id=info.id)
    step = state["step"]
    assert step == info.step
    assert torch.equal(state["w"], torch.full((600_000,), float(step)))
    for i in range(20):
        assert torch.equal(state["small"][i], torch.tensor([step, i]))


def test_kill_9_during_saves(tmp_path):
    rng = random.Random(1234)
    uri = str(tmp_path / "store")
    last_returned = -1
    next_start = 0
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for round_ in range(10):
        proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "crash_writer.py"), uri, str(next_start)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        # wait for the first save to return, then kill at a random moment during later ones
        first = proc.stdout.readline()
        assert first.strip(), f"writer died: round {round_}"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.kill()
        out, _ = proc.communicate()
        printed = [int(x) for x in (first + out).split()]
        last_returned = max(last_returned, printed[-1])
        store = ckptstore.Store(uri)
        latest = store.latest()
        assert latest is not None and latest.step >= last_returned, (latest, last_returned)
        _check_whole(uri, latest)
        # every earlier checkpoint stays intact
        infos = store.list()
        for info in rng.sample(infos, min(3, len(infos))):
            _check_whole(uri, info)
        next_start = latest.step + 1
    assert len(ckptstore.list_checkpoints(uri)) >= 10
