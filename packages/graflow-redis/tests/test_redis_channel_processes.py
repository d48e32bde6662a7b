"""RedisChannel shared by several OS processes: atomic counters, locks, killed lock holders."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from graflow_redis.channel import RedisChannel

SRC = [str(Path(__file__).resolve().parents[3] / "packages" / name / "src") for name in
       ("graflow-core", "graflow-testkit", "graflow-redis")]

# A child process: unpickles the channel it is given (no client travels in the pickle) and hammers it.
_HAMMER = """
import pickle, sys
channel = pickle.load(open(sys.argv[1], "rb"))
rounds = int(sys.argv[2])
overlaps = 0
channel.set("ready:" + sys.argv[3], True)
while not channel.exists("go"):
    pass
for i in range(rounds):
    channel.atomic_add("ints", 1)
    channel.atomic_add("floats", 0.5)
    channel.append("items", (sys.argv[3], i))
    if i % 4 == 0:
        with channel.lock("guard", timeout=60):
            if channel.atomic_add("inside", 1) != 1:
                overlaps += 1
            value = channel.get("unguarded_counter", 0)
            channel.set("unguarded_counter", value + 1)
            channel.atomic_add("inside", -1)
print(overlaps)
"""

_HOLD_AND_DIE = """
import os, pickle, sys
channel = pickle.load(open(sys.argv[1], "rb"))
lock = channel.lock("held", timeout=10)
lock.__enter__()
channel.set("holding", True)
os._exit(9)  # dies holding the lock: only the lease can free it
"""


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(SRC)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


@pytest.fixture
def channel(redis_url: str, key_prefix: str) -> Any:
    made = RedisChannel("processes", url=redis_url, key_prefix=key_prefix)
    yield made
    made.cleanup()
    made.close()


def test_two_processes_hammering_counters_lists_and_a_lock(channel: RedisChannel, tmp_path: Path) -> None:
    rounds = 600
    blob = tmp_path / "channel.pkl"
    blob.write_bytes(pickle.dumps(channel))
    children = [_spawn(_HAMMER, str(blob), str(rounds), name) for name in ("p1", "p2")]
    try:
        deadline = time.monotonic() + 60
        while not (channel.exists("ready:p1") and channel.exists("ready:p2")):
            assert all(c.poll() is None for c in children), [c.communicate() for c in children]
            assert time.monotonic() < deadline, "children did not start"
            time.sleep(0.01)
        channel.set("go", True)  # both start together, so their operations really interleave
        outputs = [child.communicate(timeout=120) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err
        assert out.strip() == "0", "two processes were inside the lock at once"
    assert channel.get("ints") == 2 * rounds
    assert channel.get("floats") == 2 * rounds * 0.5
    assert channel.get("unguarded_counter") == 2 * (rounds // 4)
    items = channel.get("items")
    assert len(items) == 2 * rounds
    for name in ("p1", "p2"):  # every item arrived, each process's in its own order
        assert [i for (who, i) in items if who == name] == list(range(rounds))


def test_lock_of_a_killed_holder_is_freed_by_its_lease(redis_url: str, key_prefix: str, tmp_path: Path) -> None:
    short = RedisChannel("killed-holder", url=redis_url, key_prefix=key_prefix, lock_lease=2.0)
    blob = tmp_path / "channel.pkl"
    blob.write_bytes(pickle.dumps(short))
    child = _spawn(_HOLD_AND_DIE, str(blob))
    _, err = child.communicate(timeout=60)
    assert child.returncode == 9, err
    assert short.get("holding") is True
    with pytest.raises(TimeoutError, match="held"), short.lock("held", timeout=0.1):
        pass  # still held right after the death...
    with short.lock("held", timeout=10):  # ...and free once the lease has run out
        short.set("taken", True)
    assert short.get("taken") is True
    short.cleanup()


def test_live_holder_keeps_its_lock_past_the_lease(redis_url: str, key_prefix: str) -> None:
    holder = RedisChannel("renewed", url=redis_url, key_prefix=key_prefix, lock_lease=1.2)
    rival = RedisChannel("renewed", url=redis_url, key_prefix=key_prefix, lock_lease=1.2)
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with holder.lock("long", timeout=5):
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert entered.wait(10)
        with pytest.raises(TimeoutError), rival.lock("long", timeout=3.0):  # 2.5 leases: renewed meanwhile
            pass
    finally:
        release.set()
        thread.join()
    with rival.lock("long", timeout=5):
        pass
    holder.cleanup()
    holder.close()
    rival.close()


def test_lock_lost_to_a_restart_is_reported_not_raised(
    own_redis_server: Any, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel = RedisChannel("lost", url=own_redis_server.url, key_prefix=key_prefix, retry_deadline=20)
    with channel.lock("k", timeout=5):
        own_redis_server.restart()  # the lock key is gone with the data
    assert "no longer held" in caplog.text
    with channel.lock("k", timeout=1):
        pass
    channel.close()
