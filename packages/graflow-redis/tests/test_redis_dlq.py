"""Poison tasks end in the dead-letter queue, and ``graflow dlq list|requeue|purge`` operate it."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import task, workflow
from graflow.cli.main import main as graflow_main
from graflow.core.task import ParallelGroup
from graflow_redis.queue import RedisTaskQueue

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])


@task
def poison(url: str, flag: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    if client.get(flag) == b"deadly":
        os._exit(1)  # takes its worker down, every time
    client.set(flag + ":ran", "yes")
    return "survived"


@task
def healthy() -> str:
    return "fine"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = graflow_main(["dlq", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_poison_is_dead_lettered_and_the_cli_lists_requeues_and_purges(
    redis_url: str, key_prefix: str, redis_client: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag = f"{key_prefix}:flag"
    redis_client.set(flag, "deadly")
    workers = Workers(redis_url, key_prefix, tmp_path)
    try:
        supervisor = workers.start("--processes", "1", worker_id="sacrificial")
        with workflow("poisoned") as wf:
            ParallelGroup(
                [poison(task_id="poison", url=redis_url, flag=flag), healthy(task_id="healthy")]
            ).with_execution(
                backend="redis",
                backend_config={"url": redis_url, "key_prefix": key_prefix, "max_deliveries": 2, "reap_interval": 0.3},
            ).with_policy("best_effort")
        _, ctx = wf.execute(ret_context=True)
        assert ctx.get_result("healthy") == "fine"
        error = ctx.get_result("poison")
        assert isinstance(error, Exception)
        assert "did not run" in str(error) and "delivered 2 time(s)" in str(error)
        assert supervisor.poll() is None, "the supervisor outlived its crashing children"

        base = ["--redis-url", redis_url, "--key-prefix", key_prefix]
        code, out, _ = _cli(capsys, "list", *base, "--json")
        assert code == 0
        (entry,) = json.loads(out)
        assert entry["queue"] == "default" and entry["deliveries"] == 2
        assert "each time its worker stopped before answering" in entry["reason"]
        code, out, _ = _cli(capsys, "list", *base)
        assert code == 0 and entry["id"] in out and "1 dead letter(s)" in out

        # fix the cause, then put it back: a worker runs it
        redis_client.set(flag, "harmless")
        code, out, _ = _cli(capsys, "requeue", entry["id"][:8], *base, "--queue", "default")
        assert code == 0 and "re-queued 1 message(s)" in out
        wait_for(lambda: redis_client.get(flag + ":ran") == b"yes", what="the re-queued task to run")
        code, out, _ = _cli(capsys, "list", *base, "--queue", "default")
        assert "no dead letters" in out
    finally:
        workers.stop_all()


def test_purge_and_cli_errors(
    redis_url: str, key_prefix: str, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = RedisTaskQueue(None, url=redis_url, key_prefix=key_prefix)
    try:
        for i in range(3):
            redis_client.lpush(queue.key("q", "jobs"), b"not a message %d" % i)
        for _ in range(3):
            assert queue.fetch("jobs", "w1", 1.0) is None  # malformed: dead-lettered on arrival
        base = ["--redis-url", redis_url, "--key-prefix", key_prefix]
        dead = queue.dead_letters("jobs")
        assert len(dead) == 3

        code, _, err = _cli(capsys, "requeue", dead[0].id, *base, "--queue", "jobs")
        assert code == 1 and "malformed and cannot run" in err and "graflow dlq purge" in err
        code, _, err = _cli(capsys, "purge", "doesnotexist", *base, "--queue", "jobs")
        assert code == 1 and "No dead letter with id doesnotexist" in err
        code, _, err = _cli(capsys, "purge", "some-id", *base)
        assert code == 2 and "--queue NAME" in err
        code, _, err = _cli(capsys, "purge", *base, "--queue", "jobs")
        assert code == 2 and "--all" in err

        code, out, _ = _cli(capsys, "purge", dead[0].id, *base, "--queue", "jobs")
        assert code == 0 and "purged 1" in out
        code, out, _ = _cli(capsys, "purge", *base, "--queue", "jobs", "--all")
        assert code == 0 and "purged 2" in out
        assert queue.dead_letters("jobs") == []
    finally:
        queue.close()


def test_cli_without_redis_url_explains(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("GRAFLOW_REDIS_URL", raising=False)
    code, _, err = _cli(capsys, "list")
    assert code == 2 and "--redis-url" in err
