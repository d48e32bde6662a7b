"""Signed payloads: with a shared secret, workers refuse unsigned and tampered messages (dead-letter)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import task, workflow
from graflow.core.task import ParallelGroup
from graflow.worker.jobs import dumps
from graflow_redis import signing
from graflow_redis.queue import RedisTaskQueue
from graflow_redis.signing import Signer

sys.path.insert(0, str(Path(__file__).parent))
from redis_worker_procs import Workers

cloudpickle.register_pickle_by_value(sys.modules[__name__])

SECRET = "correct horse battery staple"


# -- the signer ------------------------------------------------------------------------------------------------
def test_signer_signs_and_verifies() -> None:
    signer = Signer(SECRET)
    signature = signer.sign(b"payload")
    assert len(signature) == 64 and signer.verify(b"payload", signature)
    assert not signer.verify(b"payloaD", signature)
    assert not signer.verify(b"payload", b"")
    assert not Signer("another secret").verify(b"payload", signature)
    assert Signer(None).sign(b"x") == b"" and Signer(None).verify(b"x", b"") is True
    assert Signer("").enabled is False


def test_signer_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRAFLOW_SECRET_KEY", SECRET)
    assert Signer.from_options().sign(b"x") == Signer(SECRET).sign(b"x")
    assert Signer.from_options("explicit").sign(b"x") == Signer("explicit").sign(b"x")
    monkeypatch.delenv("GRAFLOW_SECRET_KEY")
    assert not Signer.from_options().enabled


def test_a_signer_never_pickles_its_secret() -> None:
    with pytest.raises(TypeError, match="never pickled"):
        cloudpickle.dumps(Signer(SECRET))


def test_message_format_round_trip_and_malformed_input() -> None:
    signer = Signer(SECRET)
    mid, raw = signing.encode_message(signer, b"body|with|bars", "reply:key", 5)
    message = signing.decode_message(raw)
    assert (message.id, message.reply_key, message.max_deliveries, message.failed_deliveries) == (
        mid,
        "reply:key",
        5,
        0,
    )
    assert message.payload == b"body|with|bars"
    assert signer.verify(message.signed_part, message.signature)
    for bad in (b"", b"GF1|", b"GF2|" + raw[4:], raw.replace(mid.encode(), b"zz"), b"GF1|%s|r|x|0||p" % mid.encode()):
        with pytest.raises(signing.MalformedMessage):
            signing.decode_message(bad)


# -- brokers with secrets --------------------------------------------------------------------------------------
class Canary:
    """Unpickling this creates a file: proof that a payload was (or was not) unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


@pytest.fixture
def signed(redis_url: str, key_prefix: str) -> Any:
    q = RedisTaskQueue(None, url=redis_url, key_prefix=key_prefix, secret_key=SECRET)
    yield q
    q.close()


def test_unsigned_message_is_refused_unread(
    redis_url: str, key_prefix: str, signed: RedisTaskQueue, tmp_path: Path
) -> None:
    canary = tmp_path / "unpickled"
    unsigned = RedisTaskQueue(None, url=redis_url, key_prefix=key_prefix, secret_key="")  # explicitly no secret
    assert not unsigned.signer.enabled
    reply_key = unsigned.new_reply_key("s")
    (mid,) = unsigned.send([("default", dumps(Canary(str(canary))), None)], reply_key)
    assert signed.fetch("default", "careful", 1.0) is None
    (dead,) = signed.dead_letters("default")
    assert dead.id == mid and "unsigned message" in dead.reason
    assert not canary.exists(), "a refused payload must never be unpickled"
    reply = signing.decode_reply(signed.signer, signed.connection.client.lpop(reply_key))
    assert reply.status == signing.STATUS_DEAD and b"unsigned" in reply.payload
    unsigned.close()


def test_tampered_message_is_refused(signed: RedisTaskQueue, tmp_path: Path) -> None:
    reply_key = signed.new_reply_key("s")
    (mid,) = signed.send([("default", b"harmless payload", None)], reply_key)
    client = signed.connection.client
    qkey = signed.key("q", "default")
    raw = client.rpop(qkey)
    client.rpush(qkey, raw.replace(b"harmless", b"HARMFUL!"))
    assert signed.fetch("default", "careful", 1.0) is None
    (dead,) = signed.dead_letters("default")
    assert dead.id == mid and "signature mismatch" in dead.reason


def test_correctly_signed_message_is_accepted(signed: RedisTaskQueue) -> None:
    (mid,) = signed.send([("default", b"fine", None)], signed.new_reply_key("s"))
    delivery = signed.fetch("default", "careful", 1.0)
    assert delivery is not None and delivery.id == mid and delivery.body == b"fine"


# -- real workers -----------------------------------------------------------------------------------------------
@task
def add_one(x: int) -> int:
    return x + 1


def _group(redis_url: str, key_prefix: str, **config: Any) -> Any:
    with workflow("signed") as wf:
        ParallelGroup([add_one(task_id=f"a{i}", x=i) for i in range(3)]).with_execution(
            backend="redis", backend_config={"url": redis_url, "key_prefix": key_prefix, **config}
        ).with_policy("best_effort")
    return wf


def test_signed_run_on_a_worker_that_requires_signatures(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    workers = Workers(redis_url, key_prefix, tmp_path)
    try:
        workers.start(worker_id="strict", env={"GRAFLOW_SECRET_KEY": SECRET})
        result = _group(redis_url, key_prefix, secret_key=SECRET).execute()
        assert result == {"a0": 1, "a1": 2, "a2": 3}
        # an unsigned producer's members are dead-lettered, with a clear log line on the worker
        _, ctx = _group(redis_url, key_prefix, secret_key="").execute(ret_context=True)
        error = ctx.get_result("a0")
        assert isinstance(error, Exception) and "did not run" in str(error) and "unsigned" in str(error)
        log = workers.logs()
        assert "refused message" in log and "unsigned message" in log
        queue = RedisTaskQueue(None, url=redis_url, key_prefix=key_prefix)
        assert len(queue.dead_letters("default")) == 3
        queue.close()
    finally:
        workers.stop_all()


def test_a_worker_without_the_secret_cannot_answer_a_signing_producer(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> None:
    workers = Workers(redis_url, key_prefix, tmp_path)
    try:
        workers.start(worker_id="lax")
        _, ctx = _group(redis_url, key_prefix, secret_key=SECRET).execute(ret_context=True)
        error = ctx.get_result("a1")
        assert isinstance(error, Exception)
        assert "unsigned or its signature does not match" in str(error) and "GRAFLOW_SECRET_KEY" in str(error)
    finally:
        workers.stop_all()
