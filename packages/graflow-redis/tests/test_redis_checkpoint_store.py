"""RedisCheckpointStore against a real redis-server: the store conformance suite plus Redis specifics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from graflow.checkpoint_store import PARTS
from graflow.core.checkpoint import CheckpointManager, store_for
from graflow.exceptions import CheckpointError, ConfigError
from graflow_redis.checkpoint_store import DATA_PREFIX, INDEX_PREFIX, RedisCheckpointStore
from graflow_redis.connection import RedisConnectionError
from graflow_testkit.checkpoint_stores import CheckpointStoreConformance
from graflow_testkit.crash import sigkill_then_resume
from graflow_testkit.services.redis import free_port, start_or_skip

PKL, STATE, META = PARTS
SRC = [str(Path(__file__).resolve().parents[3] / "packages" / name / "src") for name in
       ("graflow-core", "graflow-testkit", "graflow-redis")]


def _forget(redis_client: Any, folder: str) -> None:
    for pattern in (f"{DATA_PREFIX}{folder}*", f"{INDEX_PREFIX}{folder}*"):
        stale = list(redis_client.scan_iter(match=pattern, count=1000))
        if stale:
            redis_client.delete(*stale)


class TestRedisCheckpointStoreConformance(CheckpointStoreConformance):
    @pytest.fixture
    def store(self) -> RedisCheckpointStore:
        return store_for("redis://localhost/0/x")  # the instance CheckpointManager uses

    @pytest.fixture
    def location(self, redis_url: str, redis_client: Any) -> Iterator[str]:
        folder = f"conformance-{uuid.uuid4().hex[:10]}"
        yield f"{redis_url}/{folder}"
        _forget(redis_client, folder)


@pytest.fixture
def folder(redis_client: Any) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    _forget(redis_client, name)


def test_scheme_resolves_to_this_store() -> None:
    assert isinstance(store_for("redis://h:1/0/a"), RedisCheckpointStore)
    assert isinstance(store_for("rediss://h:1/0/a"), RedisCheckpointStore)


def test_layout_is_one_hash_and_a_folder_index(redis_url: str, redis_client: Any, folder: str) -> None:
    store = store_for(redis_url)
    base = f"{redis_url}/{folder}/runs/c1"
    store.write_part(base, PKL, b"p")
    store.write_part(base, STATE, b"s")
    assert redis_client.zrange(f"{INDEX_PREFIX}{folder}/runs", 0, -1) == []  # not committed yet
    store.write_part(base, META, b"m")
    assert redis_client.hgetall(f"{DATA_PREFIX}{folder}/runs/c1") == {PKL.encode(): b"p", STATE.encode(): b"s",
                                                                        META.encode(): b"m"}
    assert redis_client.zrange(f"{INDEX_PREFIX}{folder}/runs", 0, -1) == [b"c1"]
    store.delete(base)
    assert not redis_client.exists(f"{DATA_PREFIX}{folder}/runs/c1")
    assert redis_client.zrange(f"{INDEX_PREFIX}{folder}/runs", 0, -1) == []


def test_index_entry_without_meta_is_not_listed_and_is_forgotten(
    redis_url: str, redis_client: Any, folder: str
) -> None:
    store = store_for(redis_url)
    base = f"{redis_url}/{folder}/gone"
    for suffix in PARTS:
        store.write_part(base, suffix, b"x")
    redis_client.hdel(f"{DATA_PREFIX}{folder}/gone", META)  # e.g. removed by hand
    assert store.list_bases(f"{redis_url}/{folder}") == []
    assert redis_client.zrange(f"{INDEX_PREFIX}{folder}", 0, -1) == []


def test_databases_are_separate(redis_server: Any, folder: str) -> None:
    store = store_for(redis_server.url)
    host = f"redis://127.0.0.1:{redis_server.port}"
    store.write_part(f"{host}/1/{folder}/c", META, b"{}")
    assert store.list_bases(f"{host}/0/{folder}") == []
    assert store.list_bases(f"{host}/1/{folder}") == [f"{host}/1/{folder}/c"]
    store.delete(f"{host}/1/{folder}/c")


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("redis://localhost:6379/checkpoints/x", "database number"),
        ("redis://localhost:6379", "database number"),
        ("redis:///0/x", "expected redis://host:port"),
        ("redis://localhost:bad/0/x", "Malformed"),
        ("redis://localhost:6379/0/x?y=1", "'\\?'"),
    ],
)
def test_bad_addresses(address: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisCheckpointStore().read_part(address, PKL)


def test_database_alone_is_not_a_checkpoint(redis_url: str) -> None:
    with pytest.raises(ConfigError, match="names a database, not a checkpoint"):
        store_for(redis_url).write_part(redis_url, META, b"{}")


def test_missing_checkpoint_is_a_clear_error(redis_url: str, folder: str) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint exists there"):
        CheckpointManager.resume_from_checkpoint(f"{redis_url}/{folder}/never.pkl")


def test_server_down_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_REDIS_RETRY_DEADLINE", "0.3")
    port = free_port()  # nobody listens here
    store = RedisCheckpointStore()
    with pytest.raises(RedisConnectionError, match=f"127.0.0.1:{port}/0 is unreachable") as info:
        store.read_part(f"redis://127.0.0.1:{port}/0/runs/c", PKL)
    assert isinstance(info.value, ConnectionError)


def test_server_down_while_checkpointing_fails_the_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    from graflow.core.context import ExecutionContext
    from graflow.core.task import TaskWrapper
    from graflow.core.workflow import workflow

    monkeypatch.setenv("GRAFLOW_REDIS_RETRY_DEADLINE", "0.3")
    with workflow("down") as wf:
        TaskWrapper("only", lambda: 1)
    ctx = ExecutionContext.create(wf.graph)
    port = free_port()
    with pytest.raises(CheckpointError, match=f"127.0.0.1:{port}/0 is unreachable") as info:
        CheckpointManager.create_checkpoint(ctx, path=f"redis://127.0.0.1:{port}/0/runs/")
    assert isinstance(info.value.__cause__, RedisConnectionError)


def test_wrong_password_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_or_skip(password="right-one")
    try:
        monkeypatch.setenv("GRAFLOW_REDIS_RETRY_DEADLINE", "30")  # a refused password is never retried
        with pytest.raises(RedisConnectionError, match="refused the credentials"):
            RedisCheckpointStore().read_part(f"redis://:wrong-one@127.0.0.1:{server.port}/0/c", PKL)
        with pytest.raises(RedisConnectionError, match="refused the credentials"):
            RedisCheckpointStore().read_part(f"redis://127.0.0.1:{server.port}/0/c", PKL)  # none at all
    finally:
        server.cleanup()


def test_error_messages_do_not_show_the_password(redis_server: Any, folder: str) -> None:
    store = RedisCheckpointStore()
    address = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0/{folder}/c"
    with pytest.raises(FileNotFoundError) as info:
        store.read_part(address, PKL)
    assert "hunter2" not in str(info.value)
    assert "***" in str(info.value)


# -- a workflow checkpointed to redis:// and resumed in another process ------------------------------------------
_PRELUDE = """
# Source checkouts run without installed entry points: register the plugin by hand then.
from graflow import plugins
import graflow_redis.plugin
if "redis" not in plugins.names("channel"):
    plugins.register(graflow_redis.plugin, name="redis")
"""

_WRITER = _PRELUDE + """
import json, os, sys
from graflow.core.context import ExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.core.task import TaskWrapper
from graflow.core.workflow import workflow

url, prefix, location = sys.argv[1:4]

def record(ctx, name):
    ctx.get_channel().append("ran", name)

def step(ctx):
    channel = ctx.get_channel()
    record(ctx, "step")
    n = channel.atomic_add("n", 1)
    channel.set("last", (n, "tuple"))
    if n == 2:
        ctx.checkpoint(metadata={"at": n}, path=location)
    if n == 3 and os.environ.get("CRASH_AT_3"):
        print(json.dumps({"checkpoint": ctx.execution_context.last_checkpoint_path}), flush=True)
        os._exit(17)  # crash hard in the middle of the run
    if n < 5:
        ctx.next_iteration()

def finish(ctx):
    record(ctx, "finish")
    return ctx.get_channel().get("n") * 100

with workflow("resume-in-new-process") as wf:
    first = TaskWrapper("first", lambda ctx: record(ctx, "first"), inject_context=True)
    loop = TaskWrapper("step", step, inject_context=True)
    last = TaskWrapper("finish", finish, inject_context=True)
    first >> loop >> last

ctx = ExecutionContext.create(wf.graph, "first", channel_backend="redis",
                              config={"url": url, "key_prefix": prefix})
WorkflowEngine().execute(ctx)
"""

_RESUMER = _PRELUDE + """
import json, sys
from graflow.core.checkpoint import CheckpointManager
from graflow.core.engine import WorkflowEngine

ctx, meta = CheckpointManager.resume_from_checkpoint(sys.argv[1])
result = WorkflowEngine().execute(ctx)
channel = ctx.get_channel()
print(json.dumps({"result": result, "ran": channel.get("ran"), "last": list(channel.get("last")),
                  "at": meta.user_metadata["at"], "session": ctx.session_id,
                  "channel": type(channel).__name__, "prefix": channel.key_prefix}))
"""


def _run(script: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_workflow_checkpointed_to_redis_resumes_in_new_process(tmp_path: Path, key_prefix: str) -> None:
    server = start_or_skip(password="pw-in-env-only")
    try:
        writer, resumer = tmp_path / "writer.py", tmp_path / "resumer.py"
        writer.write_text(textwrap.dedent(_WRITER))
        resumer.write_text(textwrap.dedent(_RESUMER))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(SRC), "GRAFLOW_REDIS_PASSWORD": "pw-in-env-only"}
        url = f"redis://127.0.0.1:{server.port}/0"
        location = f"{url}/runs/{uuid.uuid4().hex[:8]}/"

        crashed = _run(writer, url, key_prefix, location, env={**env, "CRASH_AT_3": "1"})
        assert crashed.returncode == 17, crashed.stderr
        path = json.loads(crashed.stdout.strip().splitlines()[-1])["checkpoint"]
        assert path.startswith(location) and path.endswith(".pkl")
        client = server.client()
        [blob] = [client.hget(k, PKL) for k in client.scan_iter(match=DATA_PREFIX + "runs/*")]
        assert b"pw-in-env-only" not in blob, "the password must not be pickled into the checkpoint"

        resumed = _run(resumer, path, env=env)
        assert resumed.returncode == 0, resumed.stderr
        out = json.loads(resumed.stdout.strip().splitlines()[-1])
        assert out["result"] == 500
        assert out["at"] == 2
        assert out["channel"] == "RedisChannel" and out["prefix"] == key_prefix
        # The crashed third visit's writes were rolled back to the snapshot; nothing ran twice.
        assert out["ran"] == ["first", "step", "step", "step", "step", "step", "finish"]
        assert out["last"] == [5, "tuple"]
        client.close()
    finally:
        server.cleanup()


def test_resume_without_the_password_says_so(tmp_path: Path, key_prefix: str) -> None:
    server = start_or_skip(password="pw-needed")
    try:
        writer, resumer = tmp_path / "writer.py", tmp_path / "resumer.py"
        writer.write_text(textwrap.dedent(_WRITER))
        resumer.write_text(textwrap.dedent(_RESUMER))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(SRC), "GRAFLOW_REDIS_PASSWORD": "pw-needed"}
        url = f"redis://127.0.0.1:{server.port}/0"
        crashed = _run(writer, url, key_prefix, f"{url}/runs/nopw/", env={**env, "CRASH_AT_3": "1"})
        assert crashed.returncode == 17, crashed.stderr
        path = json.loads(crashed.stdout.strip().splitlines()[-1])["checkpoint"]
        env.pop("GRAFLOW_REDIS_PASSWORD")
        env["GRAFLOW_REDIS_RETRY_DEADLINE"] = "1"
        failed = _run(resumer, path, env=env)
        assert failed.returncode != 0
        assert "refused the credentials" in failed.stderr
        assert "GRAFLOW_REDIS_PASSWORD" in failed.stderr
    finally:
        server.cleanup()


def test_sigkilled_run_resumes_in_a_new_process_from_redis(tmp_path: Path, redis_url: str, folder: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(SRC)}
    listed = sigkill_then_resume(f"{redis_url}/{folder}", tmp_path, env, prelude=textwrap.dedent(_PRELUDE))
    assert all(m.path and m.path.startswith(f"{redis_url}/{folder}/") for m in listed)
