"""Fixtures of the graflow-s3-checkpoint tests: a real moto_server for the session, a bucket, fresh locations.

The store reaches the server through ``graflow_s3_checkpoint.configure(...)`` (the ``s3`` fixture),
not through environment variables, so nothing leaks into other packages' tests. Tests that check
the environment-variable paths set them with ``monkeypatch``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import graflow_s3_checkpoint
from graflow import plugins
from graflow_testkit.services.s3 import S3Server, s3_server  # noqa: F401 - the session fixture

# Environment variables that could point boto3 somewhere else than the test server.
_FOREIGN_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)


def ensure_plugin_registered() -> None:
    """Installed distributions register through their entry point; a source checkout on PYTHONPATH does not."""
    if "s3" not in plugins.names("checkpoint_store"):
        import graflow_s3_checkpoint.plugin

        plugins.register(graflow_s3_checkpoint.plugin, name="s3")


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    ensure_plugin_registered()
    for name in _FOREIGN_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in graflow_s3_checkpoint.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    graflow_s3_checkpoint.reset()
    yield
    graflow_s3_checkpoint.reset()


@pytest.fixture
def s3(s3_server: S3Server) -> S3Server:  # noqa: F811 - the imported fixture is used here
    """The session's server, with the store configured to use it (retries kept short for tests)."""
    graflow_s3_checkpoint.configure(
        endpoint_url=s3_server.endpoint_url,
        region_name=s3_server.region,
        aws_access_key_id=s3_server.access_key_id,
        aws_secret_access_key=s3_server.secret_access_key,
    )
    return s3_server


@pytest.fixture(scope="session")
def bucket(s3_server: S3Server) -> str:  # noqa: F811
    return s3_server.create_bucket()


@pytest.fixture
def s3_location(s3: S3Server, bucket: str) -> Iterator[str]:
    """A fresh, empty ``s3://`` location; its objects are deleted afterwards."""
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    yield f"s3://{bucket}/{prefix}"
    s3.empty_bucket(bucket, prefix + "/")
