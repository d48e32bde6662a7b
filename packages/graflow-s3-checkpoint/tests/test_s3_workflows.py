"""Checkpoints on a real S3-compatible server (moto_server over HTTP): workflows, crashes, big parts, listings.

Task functions live at module level so checkpoints pickle them by reference, and share the
``CRASH`` switch with the tests (an armed task raises once: the interruption).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import signal
import textwrap
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import graflow_s3_checkpoint
from graflow.cli.checkpoints_cmd import main as checkpoints_cli
from graflow.core.checkpoint import CheckpointManager, store_for
from graflow.core.context import ExecutionContext, TaskExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.core.task import TaskWrapper
from graflow.core.workflow import workflow
from graflow.exceptions import GraflowError
from graflow_s3_checkpoint import S3CheckpointStore
from graflow_testkit.crash import sigkill_then_resume
from graflow_testkit.services.s3 import S3FaultProxy, S3Server

pytestmark = pytest.mark.s3

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[3]
SRC = [str(ROOT / "packages" / name / "src") for name in ("graflow-core", "graflow-testkit", "graflow-s3-checkpoint")]
#: Registers the plugin in a subprocess when it runs from a source checkout (no entry point installed).
PRELUDE = textwrap.dedent(
    """
    from graflow import plugins
    if "s3" not in plugins.names("checkpoint_store"):
        import graflow_s3_checkpoint.plugin
        plugins.register(graflow_s3_checkpoint.plugin, name="s3")
    """
)

CRASH: set[str] = set()


def _key(address: str) -> tuple[str, str]:
    bucket, _, key = address[len("s3://") :].partition("/")
    return bucket, key


# -- a workflow with dynamic tasks and a loop -------------------------------------------------------------
def _record(ctx: TaskExecutionContext, entry: Any = None) -> None:
    ctx.get_channel().append("ran", ctx.task_id if entry is None else entry)


def _crash_if_armed(ctx: TaskExecutionContext) -> None:
    if ctx.task_id in CRASH:
        CRASH.discard(ctx.task_id)
        raise RuntimeError(f"simulated crash in {ctx.task_id}")


def start(ctx: TaskExecutionContext) -> None:
    _record(ctx)


def spawner(ctx: TaskExecutionContext) -> None:
    _record(ctx)
    ctx.next_task(TaskWrapper("dyn_a", dynamic, inject_context=True, register_to_context=False))
    ctx.next_task(TaskWrapper("dyn_b", dynamic, inject_context=True, register_to_context=False))
    ctx.checkpoint(metadata={"at": "spawner"}, path=ctx.get_channel().get("ckpt") + "/spawner")


def dynamic(ctx: TaskExecutionContext) -> None:
    _crash_if_armed(ctx)
    _record(ctx)
    ctx.get_channel().atomic_add("dyn_total", 1)


def looper(ctx: TaskExecutionContext, data: Any = None) -> int:
    channel = ctx.get_channel()
    if channel.get("count", 0) == 3:
        _crash_if_armed(ctx)
    count = channel.atomic_add("count", 1)
    _record(ctx, f"loop{count}:{data}")
    if count == 2:
        ctx.checkpoint(metadata={"at": "loop"}, path=channel.get("ckpt") + "/loop")
    if count < 5:
        ctx.next_iteration(data=count * 10)
    return count


def finish(ctx: TaskExecutionContext) -> int:
    _record(ctx)
    channel = ctx.get_channel()
    return channel.get("count") + 100 * channel.get("dyn_total")


def _build() -> Any:
    with workflow("s3-dynamic-loop") as wf:
        t = {
            name: TaskWrapper(name, fn, inject_context=True)
            for name, fn in [("start", start), ("spawner", spawner), ("looper", looper), ("finish", finish)]
        }
        t["start"] >> t["spawner"] >> t["looper"] >> t["finish"]
    return wf.graph


def _run(location: str, crash: set[str] = frozenset()) -> ExecutionContext:
    CRASH.clear()
    CRASH.update(crash)
    ctx = ExecutionContext.create(_build(), max_steps=100)
    ctx.channel.set("ckpt", location)
    if crash:
        with pytest.raises(GraflowError, match="simulated crash"):
            WorkflowEngine().execute(ctx)
        assert not CRASH, "the interruption did not happen"
    else:
        ctx.result = WorkflowEngine().execute(ctx)  # type: ignore[attr-defined]
    return ctx


@pytest.mark.parametrize(("crash_in", "resume_from"), [("dyn_b", "spawner"), ("looper", "loop")])
def test_dynamic_tasks_and_loop_resume_from_s3(s3_location: str, crash_in: str, resume_from: str) -> None:
    reference = _run(s3_location + "/reference")
    assert reference.result == 5 + 200  # type: ignore[attr-defined]
    _run(s3_location + "/interrupted", crash={crash_in})
    path = f"{s3_location}/interrupted/{resume_from}"
    resumed, meta = CheckpointManager.resume_from_checkpoint(path)
    assert meta.user_metadata["at"] == resume_from
    assert meta.path == path + ".pkl"
    if resume_from == "spawner":
        # the dynamic tasks are in the checkpoint: graph nodes and pending queue
        assert {"dyn_a", "dyn_b"} <= set(resumed.graph.nodes)
        assert set(resumed.task_queue.to_list()) == {"dyn_a", "dyn_b", "looper"}
    else:
        assert resumed.cycle_counts["looper"] == 2
        assert resumed.task_queue.to_list() == ["looper"]
    result = WorkflowEngine().execute(resumed)
    assert result == reference.result  # type: ignore[attr-defined]
    assert resumed.channel.get("ran") == reference.channel.get("ran")
    assert resumed.completed_tasks == reference.completed_tasks
    assert resumed.cycle_counts == reference.cycle_counts
    listed = [m.path for m in CheckpointManager.list_checkpoints(s3_location + "/interrupted")]
    assert set(listed) == {f"{s3_location}/interrupted/spawner.pkl", f"{s3_location}/interrupted/loop.pkl"}


# -- a real crash: SIGKILL, then resume in a new process ----------------------------------------------------
def _subprocess_env(s3: S3Server) -> dict[str, str]:
    """Only the standard AWS variables: the subprocess finds the server through AWS_ENDPOINT_URL_S3."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GRAFLOW_S3_"))}
    env.update(s3.env())
    env["PYTHONPATH"] = os.pathsep.join([*SRC, os.environ.get("PYTHONPATH", "")])
    return env


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_run_resumes_in_a_new_process_from_s3(s3: S3Server, s3_location: str, tmp_path: Path) -> None:
    listed = sigkill_then_resume(s3_location, tmp_path, _subprocess_env(s3), prelude=PRELUDE)
    assert all(m.path and m.path.startswith(s3_location + "/ckpt-") for m in listed)


# -- the CLI on s3:// locations -------------------------------------------------------------------------------
def double(value: int = 21) -> int:
    return value * 2


def _make_checkpoints(location: str, count: int) -> list[str]:
    with workflow("cli-s3") as wf:
        TaskWrapper("first", double) >> TaskWrapper("second", double)
    ctx = ExecutionContext.create(wf.graph)
    paths = []
    for i in range(count):
        ctx.steps = i
        paths.append(CheckpointManager.create_checkpoint(ctx, path=f"{location}/c{i}", metadata={"i": i})[0])
    return paths


def test_cli_list_show_resume_prune(s3_location: str, capsys: pytest.CaptureFixture[str]) -> None:
    paths = _make_checkpoints(s3_location, 4)
    assert checkpoints_cli(["list", s3_location]) == 0
    out = capsys.readouterr().out
    assert out.index(paths[3]) < out.index(paths[2]) < out.index(paths[1]) < out.index(paths[0])
    assert checkpoints_cli(["list", s3_location, "--json"]) == 0
    assert [row["path"] for row in json.loads(capsys.readouterr().out)] == paths[::-1]

    assert checkpoints_cli(["show", paths[1], "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["path"] == paths[1] and shown["metadata"]["user_metadata"]["i"] == 1
    assert shown["state"]["pending_tasks"] == ["first"]
    assert checkpoints_cli(["show", paths[1]]) == 0
    assert "ok (sha256)" in capsys.readouterr().out

    assert checkpoints_cli(["resume", paths[0]]) == 0
    assert capsys.readouterr().out.strip() == "42"
    assert checkpoints_cli(["resume", "--latest", s3_location, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == paths[3]

    assert checkpoints_cli(["prune", s3_location, "--keep", "1", "--dry-run"]) == 0
    assert capsys.readouterr().out.count("would delete") == 3
    assert len(CheckpointManager.list_checkpoints(s3_location)) == 4
    assert checkpoints_cli(["prune", s3_location, "--keep", "1"]) == 0
    assert "deleted 3" in capsys.readouterr().out
    assert [m.path for m in CheckpointManager.list_checkpoints(s3_location)] == [paths[3]]


def test_cli_errors_are_one_line(s3: S3Server, s3_location: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert checkpoints_cli(["list", "s3://graflow-no-such-bucket-here/x"]) == 1
    err = capsys.readouterr().err
    assert "graflow-no-such-bucket-here" in err and "does not exist" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert checkpoints_cli(["show", s3_location + "/nothing"]) == 1
    err = capsys.readouterr().err
    assert "no checkpoint exists there" in err and s3_location + "/nothing.meta.json" in err


# -- retention --------------------------------------------------------------------------------------------
def test_prune_deletes_every_part_of_old_checkpoints(s3: S3Server, s3_location: str) -> None:
    paths = _make_checkpoints(s3_location, 5)
    deleted = CheckpointManager.prune(s3_location, keep_last=2)
    assert sorted(deleted) == sorted(paths[:3])
    bucket, prefix = _key(s3_location)
    left = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["Contents"])
    expected = sorted(f"{prefix}/c{i}{part}" for i in (3, 4) for part in (".pkl", ".state.json", ".meta.json"))
    assert left == expected
    assert CheckpointManager.prune(s3_location, keep_last=2) == []
    assert CheckpointManager.prune(s3_location, keep_last=0) == [paths[4], paths[3]]
    assert s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix + "/")["KeyCount"] == 0


def test_newest_first_across_listing_pages(s3_location: str) -> None:
    graflow_s3_checkpoint.configure(page_size=2)  # 5 checkpoints = 15 objects = 8 listing pages
    paths = _make_checkpoints(s3_location, 5)
    assert [m.path for m in CheckpointManager.list_checkpoints(s3_location)] == paths[::-1]
    latest = CheckpointManager.latest(s3_location)
    assert latest is not None and latest.path == paths[4]


def test_listing_more_than_1000_objects(s3: S3Server, bucket: str) -> None:
    """1,100 objects under one prefix: two listing pages of S3's maximum 1,000 keys."""
    prefix = f"many-{uuid.uuid4().hex[:8]}"
    client = s3.client()
    committed = [f"{prefix}/c{i:04d}" for i in range(1020)]
    uncommitted = [f"{prefix}/u{i:04d}" for i in range(60)]
    nested = [f"{prefix}/sub/d{i:02d}" for i in range(20)]

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=b"{}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, [k + ".meta.json" for k in committed + nested] + [k + ".pkl" for k in uncommitted]))
    proxy = S3FaultProxy(s3.endpoint_url)  # only to count the listing requests
    try:
        graflow_s3_checkpoint.configure(endpoint_url=proxy.endpoint_url)
        bases = S3CheckpointStore().list_bases(f"s3://{bucket}/{prefix}")
        pages = [r for r in proxy.log if r.operation == "ListObjectsV2"]
    finally:
        proxy.stop()
        s3.empty_bucket(bucket, prefix + "/")
    assert bases == [f"s3://{bucket}/{k}" for k in committed]
    assert len(pages) == 2 and all(r.status == 200 for r in pages)


# -- big checkpoints ------------------------------------------------------------------------------------------
def _context_with_blob(size: int) -> tuple[ExecutionContext, bytes]:
    with workflow("big") as wf:
        TaskWrapper("only", double)
    ctx = ExecutionContext.create(wf.graph)
    blob = os.urandom(size)
    ctx.channel.set("blob", blob)
    return ctx, blob


def test_checkpoint_over_16mb_goes_up_as_multipart(s3: S3Server, s3_location: str) -> None:
    ctx, blob = _context_with_blob(20 * MIB)
    path, meta = CheckpointManager.create_checkpoint(ctx, path=s3_location + "/big")
    bucket, key = _key(s3_location + "/big")
    client = s3.client()
    head = client.head_object(Bucket=bucket, Key=key + ".pkl")
    size = meta.sizes[".pkl"]
    assert head["ContentLength"] == size > 16 * MIB
    # A multipart object's ETag is "<md5 of the part md5s>-<number of parts>"; 8 MiB parts by default.
    assert head["ETag"].strip('"').endswith(f"-{math.ceil(size / (8 * MIB))}")
    for small in (".state.json", ".meta.json"):
        assert "-" not in client.head_object(Bucket=bucket, Key=key + small)["ETag"]
    assert client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) == []
    resumed, _ = CheckpointManager.resume_from_checkpoint(path)
    assert resumed.channel.get("blob") == blob


def test_multipart_threshold_and_part_size_from_environment(
    s3: S3Server, s3_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRAFLOW_S3_MULTIPART_THRESHOLD", "1MiB")
    monkeypatch.setenv("GRAFLOW_S3_MULTIPART_CHUNKSIZE", "5MiB")
    data = os.urandom(11 * MIB)
    store = store_for(s3_location)
    store.write_part(s3_location + "/env", ".pkl", data)
    store.write_part(s3_location + "/env", ".state.json", os.urandom(2 * MIB))
    bucket, key = _key(s3_location + "/env")
    assert s3.client().head_object(Bucket=bucket, Key=key + ".pkl")["ETag"].strip('"').endswith("-3")
    assert s3.client().head_object(Bucket=bucket, Key=key + ".state.json")["ETag"].strip('"').endswith("-1")
    assert store.read_part(s3_location + "/env", ".pkl") == data


# -- encryption, storage class, checksums -------------------------------------------------------------------
def test_sse_s3_and_storage_class_on_every_part(s3: S3Server, s3_location: str) -> None:
    graflow_s3_checkpoint.configure(sse="AES256", storage_class="STANDARD_IA")
    path, _ = _make_checkpoints(s3_location, 1)[0], None
    bucket, key = _key(path[: -len(".pkl")])
    for part in (".pkl", ".state.json", ".meta.json"):
        head = s3.client().head_object(Bucket=bucket, Key=key + part)
        assert head["ServerSideEncryption"] == "AES256"
        assert head["StorageClass"] == "STANDARD_IA"
    ctx, _ = CheckpointManager.resume_from_checkpoint(path)
    assert WorkflowEngine().execute(ctx) == 42


def test_sse_kms_with_key_on_multipart_and_single_parts(s3: S3Server, s3_location: str) -> None:
    key_id = s3.client("kms").create_key(Description="graflow checkpoints")["KeyMetadata"]["KeyId"]
    graflow_s3_checkpoint.configure(sse="aws:kms", sse_kms_key_id=key_id, multipart_threshold="1MiB")
    ctx, blob = _context_with_blob(3 * MIB)
    path, _ = CheckpointManager.create_checkpoint(ctx, path=s3_location + "/kms")
    bucket, key = _key(s3_location + "/kms")
    heads = {part: s3.client().head_object(Bucket=bucket, Key=key + part) for part in (".pkl", ".meta.json")}
    assert heads[".pkl"]["ETag"].strip('"').endswith("-1")  # went through the multipart path
    for head in heads.values():
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]
    assert CheckpointManager.resume_from_checkpoint(path)[0].channel.get("blob") == blob


def test_sha256_flexible_checksum_is_stored_by_s3(s3: S3Server, s3_location: str) -> None:
    graflow_s3_checkpoint.configure(checksum_algorithm="SHA256")
    store = store_for(s3_location)
    data = os.urandom(100_000)
    store.write_part(s3_location + "/sum", ".pkl", data)
    bucket, key = _key(s3_location + "/sum")
    head = s3.client().head_object(Bucket=bucket, Key=key + ".pkl", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_per_bucket_overrides(s3: S3Server, s3_location: str) -> None:
    other = s3.create_bucket()
    graflow_s3_checkpoint.configure(bucket=other, storage_class="ONEZONE_IA")
    store = store_for(s3_location)
    store.write_part(s3_location + "/x", ".pkl", b"default bucket")
    store.write_part(f"s3://{other}/x", ".pkl", b"other bucket")
    bucket, key = _key(s3_location + "/x")
    assert s3.client().head_object(Bucket=bucket, Key=key + ".pkl").get("StorageClass", "STANDARD") == "STANDARD"
    assert s3.client().head_object(Bucket=other, Key="x.pkl")["StorageClass"] == "ONEZONE_IA"


# -- configuration through the environment only -----------------------------------------------------------
@pytest.mark.parametrize("endpoint_var", ["GRAFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_environment_only_configuration(
    s3: S3Server, s3_location: str, monkeypatch: pytest.MonkeyPatch, endpoint_var: str
) -> None:
    graflow_s3_checkpoint.reset()  # drop the fixture's configure(): only the environment is left
    monkeypatch.setenv(endpoint_var, s3.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3.secret_access_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", s3.region)
    monkeypatch.setenv("GRAFLOW_S3_STORAGE_CLASS", "REDUCED_REDUNDANCY")
    paths = _make_checkpoints(s3_location, 2)
    assert [m.path for m in CheckpointManager.list_checkpoints(s3_location)] == paths[::-1]
    bucket, key = _key(paths[0][: -len(".pkl")])
    assert s3.client().head_object(Bucket=bucket, Key=key + ".pkl")["StorageClass"] == "REDUCED_REDUNDANCY"


# -- threads ----------------------------------------------------------------------------------------------------
def test_concurrent_checkpoints_from_threads(s3_location: str) -> None:
    with workflow("threads") as wf:
        TaskWrapper("first", double) >> TaskWrapper("second", double)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def write(i: int) -> str:
        ctx = ExecutionContext.create(wf.graph)
        ctx.channel.set("i", i)
        barrier.wait()
        try:
            return CheckpointManager.create_checkpoint(ctx, path=f"{s3_location}/", metadata={"i": i})[0]
        except BaseException as exc:
            errors.append(exc)
            raise

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(write, range(8)))
    assert errors == []
    listed = CheckpointManager.list_checkpoints(s3_location)
    assert sorted(m.path for m in listed) == sorted(paths)
    for path in paths:
        ctx, meta = CheckpointManager.resume_from_checkpoint(path)
        assert ctx.channel.get("i") == meta.user_metadata["i"]
