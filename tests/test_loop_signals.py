"""Emergency saves on SIGTERM / SIGINT / SIGUSR1 at the next step; handlers restored on close."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ckptstore
from ckptstore.adapters.loop import Checkpointer

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")


def _prior(signum: int, frame: object) -> None:  # a handler the user had before
    raise AssertionError("the previous handler ran while the checkpointer was active")


@pytest.fixture
def prior_handlers():
    old = {s: signal.signal(s, _prior) for s in (signal.SIGTERM, signal.SIGUSR1)}
    old_int = signal.getsignal(signal.SIGINT)
    yield
    for s, h in old.items():
        signal.signal(s, h)
    signal.signal(signal.SIGINT, old_int)


def test_handlers_installed_at_first_step_and_restored_on_close(tmp_path: Path, prior_handlers: None) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    ck = Checkpointer(tmp_path, signals=("SIGTERM", "SIGINT", "SIGUSR1"))
    assert {s: signal.getsignal(s) for s in before} == before  # nothing changed before the loop runs
    ck.step(0, model=torch.nn.Linear(2, 2))
    assert all(signal.getsignal(s) != before[s] for s in before)
    ck.close()
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_signal_saves_at_next_step_then_exits(tmp_path: Path, prior_handlers: None, sig: int) -> None:
    model = torch.nn.Linear(2, 2)
    ck = Checkpointer(tmp_path, every_steps=100, signals=("SIGTERM", "SIGUSR1"))
    ck.step(0, model=model)
    os.kill(os.getpid(), sig)  # handler runs here: it only records the signal
    assert not list(tmp_path.glob("manifests/*.json"))  # nothing saved from inside the handler
    with torch.no_grad():
        model.weight.add_(1)
    with pytest.raises(SystemExit) as e:
        ck.step(1)
    assert e.value.code == 128 + sig
    info = ckptstore.info(tmp_path)
    assert info.step == 2 and info.meta["trigger"] == f"signal:{signal.Signals(sig).name}"
    assert torch.equal(ckptstore.load(tmp_path)["model"]["weight"], model.weight)
    assert signal.getsignal(sig) is _prior  # closed: previous handler back


def test_signal_without_exit_sets_stop_requested(tmp_path: Path, prior_handlers: None) -> None:
    ck = Checkpointer(tmp_path, signals=("SIGUSR1",), exit_on_signal=False, save_on_close=False)
    ck.step(0, model=torch.nn.Linear(2, 2))
    os.kill(os.getpid(), signal.SIGUSR1)
    assert ck.step(1) is True and ck.stop_requested
    assert ck.step(2) is False  # handled once
    ck.close()
    assert [i.step for i in ckptstore.list_checkpoints(tmp_path)] == [2]


def test_second_ctrl_c_aborts_at_once(tmp_path: Path, prior_handlers: None) -> None:
    before = signal.getsignal(signal.SIGINT)
    ck = Checkpointer(tmp_path, signals=("SIGINT",))
    ck.step(0, model=torch.nn.Linear(2, 2))
    os.kill(os.getpid(), signal.SIGINT)  # first: recorded
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)  # second: raises right away
    ck.close(final=False)
    assert signal.getsignal(signal.SIGINT) is before and not list(tmp_path.glob("manifests/*.json"))


def test_ctrl_c_in_a_real_process_saves_and_exits_130(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, signal, torch
        from ckptstore.adapters.loop import Checkpointer
        m = torch.nn.Linear(3, 3)
        ck = Checkpointer({str(tmp_path)!r}, every_steps=1000)
        for step in range(100):
            ck.step(step, model=m)
            if step == 5:
                os.kill(os.getpid(), signal.SIGINT)
        print("not reached")
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130, p.stderr
    assert "not reached" not in p.stdout and "Traceback" not in p.stderr
    assert "got SIGINT" in p.stderr and "saved step 7" in p.stderr
    assert ckptstore.info(tmp_path).step == 7


def test_forked_child_does_not_take_over_the_parents_signals(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import os, signal, sys, time, torch
        from ckptstore.adapters.loop import Checkpointer
        ck = Checkpointer({str(tmp_path)!r})
        ck.step(0, model=torch.nn.Linear(2, 2))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # like a DataLoader worker: SIGTERM must end it as it would without ckptstore
            os.write(w, b"x")
            time.sleep(30)
            os._exit(0)
        os.read(r, 1)
        time.sleep(0.1)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print("child", os.WIFSIGNALED(status) and os.WTERMSIG(status))
        ck.close(final=False)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert f"child {int(signal.SIGTERM)}" in p.stdout and "got SIGTERM" not in p.stderr


def test_with_block_ending_in_an_exception_restores_handlers_without_saving(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(ZeroDivisionError):
        with Checkpointer(tmp_path, signals=("SIGTERM",)) as ck:
            ck.step(0, model=torch.nn.Linear(2, 2))
            assert signal.getsignal(signal.SIGTERM) != before
            1 / 0
    assert signal.getsignal(signal.SIGTERM) == before
    assert not list(tmp_path.glob("manifests/*.json"))  # no "final" save of a state broken mid-step


def test_sigterm_message_fits_a_batch_job(tmp_path: Path) -> None:
    """A scheduler's SIGTERM: no advice about pressing Ctrl+C, and the resubmit hint."""
    code = textwrap.dedent(f"""
        import os, signal, torch
        from ckptstore.adapters.loop import Checkpointer
        m = torch.nn.Linear(3, 3)
        ck = Checkpointer({str(tmp_path)!r}, every_steps=1000)
        for step in range(100):
            ck.step(step, model=m)
            if step == 5:
                os.kill(os.getpid(), signal.SIGTERM)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 128 + int(signal.SIGTERM), p.stderr
    assert "got SIGTERM" in p.stderr and "Ctrl+C" not in p.stderr
    assert "run the same command to resume" in p.stderr
