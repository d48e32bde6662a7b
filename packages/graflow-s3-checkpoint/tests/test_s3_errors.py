"""Every way an S3 checkpoint can fail, against a real server: each error names the address and the fix.

Faults the server cannot produce on its own (throttling, a failing or hanging part upload) come
from :class:`~graflow_testkit.services.s3.S3FaultProxy`, a real HTTP proxy in front of moto_server,
so boto3's own retry and abort code runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

import graflow_s3_checkpoint
from graflow.core.checkpoint import CheckpointManager, store_for
from graflow.core.context import ExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.core.task import TaskWrapper
from graflow.core.workflow import workflow
from graflow.exceptions import CheckpointError, ConfigError
from graflow_s3_checkpoint import (
    S3AccessDeniedError,
    S3BucketNotFoundError,
    S3CheckpointError,
    S3CredentialsError,
    S3EndpointError,
    S3ThrottledError,
)
from graflow_testkit.services.s3 import S3FaultProxy, S3Server, free_port

pytestmark = pytest.mark.s3

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[3]
SRC = [str(ROOT / "packages" / name / "src") for name in ("graflow-core", "graflow-testkit", "graflow-s3-checkpoint")]
PRELUDE = textwrap.dedent(
    """
    from graflow import plugins
    if "s3" not in plugins.names("checkpoint_store"):
        import graflow_s3_checkpoint.plugin
        plugins.register(graflow_s3_checkpoint.plugin, name="s3")
    """
)


def seven() -> int:
    return 7


def _context(blob_size: int = 0) -> ExecutionContext:
    with workflow("errors") as wf:
        TaskWrapper("only", seven)
    ctx = ExecutionContext.create(wf.graph)
    if blob_size:
        ctx.channel.set("blob", os.urandom(blob_size))
    return ctx


def _keys(s3: S3Server, location: str) -> list[str]:
    bucket, _, prefix = location[len("s3://") :].partition("/")
    found = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return sorted(o["Key"][len(prefix) + 1 :] for o in found.get("Contents", ()))


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3FaultProxy]:
    """A fault-injecting proxy in front of the server, with the store pointed at it."""
    front = S3FaultProxy(s3.endpoint_url)
    graflow_s3_checkpoint.configure(endpoint_url=front.endpoint_url)
    try:
        yield front
    finally:
        front.stop()


# -- credentials and permissions ---------------------------------------------------------------------------
def test_no_credentials(s3: S3Server, s3_location: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    graflow_s3_checkpoint.reset()
    graflow_s3_checkpoint.configure(endpoint_url=s3.endpoint_url, region_name=s3.region)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    for var in (
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(S3CredentialsError, match="No AWS credentials found") as info:
        CheckpointManager.create_checkpoint(_context(), path=s3_location + "/c")
    assert s3_location + "/c.pkl" in str(info.value)
    assert "AWS_ACCESS_KEY_ID" in str(info.value) and "configure(aws_access_key_id" in str(info.value)
    with pytest.raises(S3CredentialsError, match="No AWS credentials found"):
        CheckpointManager.list_checkpoints(s3_location)


def test_unknown_access_key_is_rejected(s3: S3Server, s3_location: str) -> None:
    graflow_s3_checkpoint.configure(aws_access_key_id="AKIAGRAFLOWUNKNOWN00", aws_secret_access_key="nope")
    with s3.iam_enforced(), pytest.raises(S3CredentialsError, match="InvalidAccessKeyId") as info:
        CheckpointManager.create_checkpoint(_context(), path=s3_location + "/c")
    assert "rejected the credentials" in str(info.value)


def test_access_denied_names_the_missing_permission(s3: S3Server, s3_location: str) -> None:
    path, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/existing")
    key_id, secret = s3.iam_user(
        f"reader-{uuid.uuid4().hex[:8]}",
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]},
    )
    graflow_s3_checkpoint.configure(aws_access_key_id=key_id, aws_secret_access_key=secret)
    with s3.iam_enforced():
        # reading is allowed: the policy is really evaluated per action
        ctx, _ = CheckpointManager.resume_from_checkpoint(path)
        with pytest.raises(S3AccessDeniedError, match="s3:PutObject") as write:
            CheckpointManager.create_checkpoint(ctx, path=s3_location + "/new")
        with pytest.raises(S3AccessDeniedError, match="s3:DeleteObject") as delete:
            CheckpointManager.delete(path)
        # (A denied listing is covered by the unit tests: moto's signature check rejects any signed query
        # value containing '/', such as the listing's delimiter, before it gets to the policy.)
    assert s3_location + "/new.pkl" in str(write.value) and "AccessDenied" in str(write.value)
    assert "bucket policy" in str(delete.value) and s3_location + "/existing.meta.json" in str(delete.value)
    assert _keys(s3, s3_location) == ["existing.meta.json", "existing.pkl", "existing.state.json"]
    assert WorkflowEngine().execute(ctx) == 7


# -- missing things -------------------------------------------------------------------------------------------
def test_missing_bucket(s3: S3Server) -> None:
    base = f"s3://graflow-missing-{uuid.uuid4().hex[:10]}/runs/c1"
    store = store_for(base)
    with pytest.raises(S3BucketNotFoundError, match="does not exist") as info:
        CheckpointManager.create_checkpoint(_context(), path=base)
    assert base + ".pkl" in str(info.value) and "aws s3 mb" in str(info.value)
    with pytest.raises(S3BucketNotFoundError):
        CheckpointManager.resume_from_checkpoint(base)
    with pytest.raises(S3BucketNotFoundError):
        CheckpointManager.list_checkpoints(base.rsplit("/", 1)[0])
    with pytest.raises(S3BucketNotFoundError):
        store.read_part(base, ".pkl")
    with pytest.raises(S3BucketNotFoundError):
        store.delete(base)


def test_missing_and_half_written_checkpoints(s3_location: str) -> None:
    store = store_for(s3_location)
    with pytest.raises(FileNotFoundError) as missing:
        store.read_part(s3_location + "/ghost", ".pkl")
    assert missing.value.filename == s3_location + "/ghost.pkl"
    with pytest.raises(CheckpointError, match="no checkpoint exists there"):
        CheckpointManager.resume_from_checkpoint(s3_location + "/ghost")
    store.write_part(s3_location + "/half", ".pkl", b"pickle bytes")
    with pytest.raises(CheckpointError, match="interrupted") as half:
        CheckpointManager.resume_from_checkpoint(s3_location + "/half")
    assert s3_location + "/half.meta.json" in str(half.value)


def test_corrupted_parts(s3: S3Server, s3_location: str) -> None:
    good, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/good")
    bad, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/bad")
    short, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/short")
    store = store_for(s3_location)
    store.write_part(bad[: -len(".pkl")], ".meta.json", b'{"schema_version": "2.0", "checkpoint_')
    data = store.read_part(short[: -len(".pkl")], ".pkl")
    store.write_part(short[: -len(".pkl")], ".pkl", data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        CheckpointManager.resume_from_checkpoint(bad)
    with pytest.raises(CheckpointError, match="truncated") as truncated:
        CheckpointManager.resume_from_checkpoint(short)
    assert short in str(truncated.value)
    assert {m.path for m in CheckpointManager.list_checkpoints(s3_location)} == {good, short}


def test_unpicklable_state_writes_nothing(s3: S3Server, s3_location: str) -> None:
    ctx = _context()
    ctx.channel.set("lock", threading.Lock())
    with pytest.raises(CheckpointError, match="Could not pickle"):
        CheckpointManager.create_checkpoint(ctx, path=s3_location + "/c")
    assert _keys(s3, s3_location) == []


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("s3://Bad_Bucket/runs/c1", "uppercase"),
        ("s3:///runs/c1", "no bucket name"),
        ("s3://ok-bucket/runs/c1?region=eu-west-1", "query strings"),
        ("s3://ok-bucket/", "names a bucket or a folder"),
    ],
)
def test_bad_addresses(s3: S3Server, address: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        CheckpointManager.resume_from_checkpoint(address)


def test_archived_checkpoint_says_to_restore(s3_location: str) -> None:
    graflow_s3_checkpoint.configure(storage_class="GLACIER")
    path, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/cold")
    with pytest.raises(S3CheckpointError, match="GLACIER") as info:
        CheckpointManager.resume_from_checkpoint(path)
    assert "restore-object" in str(info.value) and s3_location + "/cold.meta.json" in str(info.value)


# -- unreachable endpoint -----------------------------------------------------------------------------------
def test_unreachable_endpoint(s3: S3Server, s3_location: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    graflow_s3_checkpoint.configure(endpoint_url=dead, max_attempts=2, connect_timeout=1)
    with pytest.raises(S3EndpointError, match="Cannot talk to the S3 endpoint") as info:
        CheckpointManager.create_checkpoint(_context(), path=s3_location + "/c")
    assert dead in str(info.value) and s3_location + "/c.pkl" in str(info.value)
    assert "server is running" in str(info.value)


# -- throttling ------------------------------------------------------------------------------------------------
def test_throttling_is_retried_with_backoff(proxy: S3FaultProxy, s3_location: str) -> None:
    proxy.throttle(times=2, operation="PutObject")
    path, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/c")
    puts = [r for r in proxy.log if r.operation == "PutObject"]
    assert sorted(r.status for r in puts) == [200, 200, 200, 503, 503]
    # every throttled request was sent again and then went through; the meta part came last
    for throttled in (r for r in puts if r.status == 503):
        later = puts[puts.index(throttled) + 1 :]
        assert any(r.path == throttled.path and r.status == 200 for r in later)
    assert puts[-1].path.endswith("/c.meta.json") and puts[-1].status == 200
    proxy.throttle(times=1, operation="GetObject")
    ctx, _ = CheckpointManager.resume_from_checkpoint(path)
    gets = [r.status for r in proxy.log if r.operation == "GetObject"]
    assert gets[:2] == [503, 200]
    assert WorkflowEngine().execute(ctx) == 7


def test_throttling_through_every_attempt(proxy: S3FaultProxy, s3: S3Server, s3_location: str) -> None:
    graflow_s3_checkpoint.configure(max_attempts=3)
    proxy.throttle(operation="PutObject")
    with pytest.raises(S3ThrottledError, match="SlowDown") as info:
        CheckpointManager.create_checkpoint(_context(), path=s3_location + "/c")
    assert "3 attempts" in str(info.value) and s3_location + "/c.pkl" in str(info.value)
    assert isinstance(info.value.__cause__, ClientError)
    pkl_puts = [r.status for r in proxy.log if r.operation == "PutObject" and r.path.endswith("/c.pkl")]
    assert pkl_puts == [503, 503, 503]  # max_attempts counts the first try
    assert not any(r.path.endswith(".meta.json") for r in proxy.log)  # never committed
    assert _keys(s3, s3_location) == []


# -- interrupted uploads ----------------------------------------------------------------------------------------
def test_failed_part_aborts_the_multipart_upload(proxy: S3FaultProxy, s3: S3Server, s3_location: str) -> None:
    good, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/good")
    graflow_s3_checkpoint.configure(max_attempts=2)
    proxy.fail("UploadPart", 500, "InternalError", "disk on fire", when=lambda r: r.query.get("partNumber") == "2")
    with pytest.raises(S3CheckpointError, match="InternalError") as info:
        CheckpointManager.create_checkpoint(_context(20 * MIB), path=s3_location + "/big")
    assert s3_location + "/big.pkl" in str(info.value)
    operations = [r.operation for r in proxy.log]
    assert "CreateMultipartUpload" in operations and "AbortMultipartUpload" in operations
    assert "CompleteMultipartUpload" not in operations
    bucket = s3_location[len("s3://") :].split("/", 1)[0]
    assert s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    _assert_only_good_is_visible(s3, s3_location, good)


def _assert_only_good_is_visible(s3: S3Server, location: str, good: str) -> None:
    """The interrupted ``big`` checkpoint has no pickle object and no meta part, so it is not a checkpoint.

    (The manager writes the state part concurrently with the pickle, so ``big.state.json`` may exist.)
    """
    keys = _keys(s3, location)
    assert set(keys) - {"big.state.json"} == {"good.meta.json", "good.pkl", "good.state.json"}
    assert [m.path for m in CheckpointManager.list_checkpoints(location)] == [good]
    why = "interrupted" if "big.state.json" in keys else "no checkpoint exists there"
    with pytest.raises(CheckpointError, match=why):
        CheckpointManager.resume_from_checkpoint(location + "/big")


KILLED_UPLOAD = PRELUDE + textwrap.dedent(
    """
    import os, sys
    from graflow.core.checkpoint import CheckpointManager
    from graflow.core.context import ExecutionContext
    from graflow.core.task import TaskWrapper
    from graflow.core.workflow import workflow

    with workflow("killed-upload") as wf:
        TaskWrapper("only", lambda: 1)
    ctx = ExecutionContext.create(wf.graph)
    ctx.channel.set("blob", os.urandom(20 * 1024 * 1024))
    CheckpointManager.create_checkpoint(ctx, path=sys.argv[1])
    print("finished")
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_process_killed_mid_upload_leaves_nothing_visible(
    proxy: S3FaultProxy, s3: S3Server, s3_location: str, tmp_path: Path
) -> None:
    good, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/good")
    proxy.hang("UploadPart", when=lambda r: r.query.get("partNumber") != "1")
    script = tmp_path / "upload.py"
    script.write_text(KILLED_UPLOAD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GRAFLOW_S3_"))}
    env.update(s3.env(), AWS_ENDPOINT_URL_S3=proxy.endpoint_url)
    env["PYTHONPATH"] = os.pathsep.join([*SRC, os.environ.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, str(script), s3_location + "/big"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not any(r.operation == "UploadPart" and r.status == 0 for r in proxy.log):
            assert proc.poll() is None, f"the upload ended early: {proc.communicate()}"
            assert time.monotonic() < deadline, "the upload never reached a part"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    proxy.release()
    bucket = s3_location[len("s3://") :].split("/", 1)[0]
    pending = s3.client().list_multipart_uploads(Bucket=bucket, Prefix=s3_location.split("/", 3)[3])
    assert [u["Key"].rsplit("/", 1)[1] for u in pending.get("Uploads", [])] == ["big.pkl"]  # parts, not an object
    _assert_only_good_is_visible(s3, s3_location, good)


# -- deleting ----------------------------------------------------------------------------------------------------
def test_delete_removes_the_meta_part_first(proxy: S3FaultProxy, s3: S3Server, s3_location: str) -> None:
    keep, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/keep")
    doomed, _ = CheckpointManager.create_checkpoint(_context(), path=s3_location + "/doomed")
    proxy.clear()
    proxy.fail("DeleteObjects", 500, "InternalError", "delete failed", times=1)
    graflow_s3_checkpoint.configure(max_attempts=1)
    with pytest.raises(S3CheckpointError, match="InternalError") as info:
        CheckpointManager.delete(doomed)
    assert s3_location + "/doomed.pkl" in str(info.value)
    assert [(r.operation, r.path.rsplit("/", 1)[1], r.status) for r in proxy.log] == [
        ("DeleteObject", "doomed.meta.json", 204),
        ("DeleteObjects", s3_location[len("s3://") :].split("/", 1)[0], 500),
    ]
    # the failure came after the commit mark was gone: the checkpoint is no longer offered
    assert [m.path for m in CheckpointManager.list_checkpoints(s3_location)] == [keep]
    CheckpointManager.delete(doomed)  # deleting again finishes the job
    assert _keys(s3, s3_location) == ["keep.meta.json", "keep.pkl", "keep.state.json"]
