"""S3 without credentials: one clear error at once, that says how to give them (not to retry)."""

from __future__ import annotations

import time

import pytest

import ckptstore
from ckptstore.cli import main

from . import cloudservers as cs

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def no_aws_credentials(monkeypatch):
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no lookups beyond 127.0.0.1
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")


def test_s3_without_credentials_fails_fast_and_says_how_to_give_them(no_aws_credentials, capsys):
    moto = cs.shared("moto")
    bucket = cs.new_s3_bucket(moto.url)  # made while the test's keys were still set
    t0 = time.monotonic()
    with pytest.raises(ckptstore.StorageError) as ei:
        ckptstore.list_checkpoints(
            bucket.uri,
            storage_options={"endpoint_url": moto.url},
        )
    assert time.monotonic() - t0 < 10
    msg = str(ei.value)
    assert "no credentials" in msg and "AWS_ACCESS_KEY_ID" in msg and "key=" in msg
    assert "retries" not in msg and "retry" not in msg and "try again" not in msg
    code = main(["ls", bucket.uri, "-o", f"endpoint_url={moto.url}"])
    _out, err = capsys.readouterr()
    assert code == 1 and err.count("\n") == 1 and "no credentials" in err and "-o key=" in err
