"""Docker, SSH and subprocess tasks on Redis worker processes (graflow-redis x graflow-docker x graflow-ssh).

The package suites prove each remote handler inside thread-based parallel groups and each Redis form
with plain tasks; these tests combine them on real servers and real worker processes:

* a parallel group on the ``redis`` coordinator whose members run in a container, over SSH as the
  test user and in plain Python, all on workers, sharing one channel;
* a Docker task with a retry policy on a worker (first attempt fails, the retry succeeds), both as a
  group member on the coordinator and as a task of a whole run sent to workers;
* a whole run on workers (``RedisTaskQueue`` attached to the context) whose chain goes through the
  ``subprocess``, ``docker`` and ``ssh`` handlers.

One ``redis-server``, one ``sshd``, the Docker engine with the offline base image, and two worker
processes (``python -m graflow.worker.main``) serve the whole module; every worker (and any child it
left) is killed by PID at the end. Under ``CI=true`` a server that cannot start fails the tests.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from graflow import ExecutionContext, RetryPolicy, WorkflowEngine, plugins, task, workflow
from graflow.core.task import ParallelGroup
from graflow.exceptions import PluginNotFoundError
from graflow_testkit.processes import children
from graflow_testkit.services.docker import BASE_IMAGE, require_base_image, require_docker
from graflow_testkit.services.redis import RedisServer, redis_server_fixture
from graflow_testkit.services.sshd import SSHServer, sshd_server_fixture

# Tasks defined here (and closures inside the tests) travel to the workers by value: the workers
# cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.redis, pytest.mark.slow]

redis_server = redis_server_fixture(scope="session")
sshd = sshd_server_fixture(scope="session")

WORKER_FLAGS = [
    "--concurrency", "3",
    "--heartbeat-interval", "0.5",
    "--heartbeat-timeout", "5",
    "--poll-interval", "0.2",
    "--log-level", "INFO",
]  # fmt: skip
REPLY_TIMEOUT = 90.0  # seconds a producer waits for the workers before failing (instead of hanging)


# -- worker processes ------------------------------------------------------------------------------------------
class WorkerFleet:
    """Worker processes started as children of the test run; stopped and killed by PID in :meth:`stop`."""

    def __init__(self, url: str, key_prefix: str, log_dir: Path, cache_dir: Path) -> None:
        self.url = url
        self.key_prefix = key_prefix
        self.log_dir = log_dir
        self.cache_dir = cache_dir  # GRAFLOW_CACHE_DIR of the workers: their subprocess runners' archives
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def pids(self) -> set[int]:
        return {proc.pid for proc in self.procs.values()}

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        env["GRAFLOW_CACHE_DIR"] = str(self.cache_dir)
        env.pop("GRAFLOW_SECRET_KEY", None)
        return env

    def start(self, worker_id: str) -> None:
        env = self.env()
        command = [
            sys.executable, "-m", "graflow.worker.main",
            "--redis-url", self.url, "--key-prefix", self.key_prefix, "--worker-id", worker_id,
            *WORKER_FLAGS,
        ]  # fmt: skip
        with open(self.log_dir / f"{worker_id}.log", "ab") as log:
            self.procs[worker_id] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_registered(self, timeout: float = 30.0) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            deadline = time.monotonic() + timeout
            waiting = set(self.procs)
            while waiting and time.monotonic() < deadline:
                for worker_id in list(waiting):
                    if self.procs[worker_id].poll() is not None:
                        raise AssertionError(f"worker {worker_id} exited at start:\n{self.logs()}")
                    if client.exists(f"{self.key_prefix}:hb:{worker_id}"):
                        waiting.discard(worker_id)
                time.sleep(0.05)
        finally:
            client.close()
        if waiting:
            raise AssertionError(f"workers {sorted(waiting)} did not register within {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for worker_id in self.procs:
            path = self.log_dir / f"{worker_id}.log"
            with contextlib.suppress(OSError):
                parts.append(f"--- {worker_id}\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """SIGTERM (graceful), then SIGKILL whatever is left, children of the workers first."""
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():
            for child in children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


# -- fixtures ------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _plugins_registered() -> Iterator[None]:
    """The ``redis``, ``docker`` and ``ssh`` names resolve in this process (entry points, else registered here)."""
    import graflow_docker.plugin
    import graflow_redis.plugin
    import graflow_ssh.plugin

    added = []
    for kind, name, module in (
        ("channel", "redis", graflow_redis.plugin),
        ("task_handler", "docker", graflow_docker.plugin),
        ("task_handler", "ssh", graflow_ssh.plugin),
    ):
        try:
            plugins.lookup(kind, name)
        except PluginNotFoundError:
            plugins.register(module, name=name)
            added.append(module)
    yield
    for module in added:
        with contextlib.suppress(Exception):
            plugins.unregister(module)


@pytest.fixture(scope="session")
def docker_settings() -> dict[str, Any]:
    """``handler_kwargs`` for the ``docker`` handler: the offline base image on the test daemon."""
    info = require_docker()
    image = require_base_image(BASE_IMAGE)
    return {"image": image, "docker_host": info["DockerHost"]}


@pytest.fixture(scope="session")
def ssh_settings(sshd: SSHServer) -> dict[str, Any]:
    """``handler_kwargs`` for the ``ssh`` handler: the test sshd, its client key and known_hosts."""
    return {
        "host": sshd.host,
        "port": sshd.port,
        "user": sshd.user,
        "key_filename": str(sshd.client_key),
        "known_hosts": str(sshd.known_hosts),
        "allow_agent": False,
    }


@pytest.fixture(scope="session")
def fleet(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerFleet]:
    """Two worker processes with three task threads each, on a key prefix of their own."""
    prefix = f"graflow-test:xbackend-{uuid.uuid4().hex[:8]}"
    workers = WorkerFleet(
        redis_server.url,
        prefix,
        tmp_path_factory.mktemp("cross-backend-workers"),
        tmp_path_factory.mktemp("cross-backend-runner-cache"),
    )
    try:
        workers.start("xb-1")
        workers.start("xb-2")
        workers.wait_registered()
        yield workers
    finally:
        workers.stop()
        if redis_server.is_running:
            client = redis_server.client()
            try:
                stale = list(client.scan_iter(match=prefix + ":*", count=1000))
                for start in range(0, len(stale), 500):
                    client.delete(*stale[start : start + 500])
            finally:
                client.close()


def _coordinator(fleet: WorkerFleet) -> dict[str, Any]:
    return {"url": fleet.url, "key_prefix": fleet.key_prefix, "timeout": REPLY_TIMEOUT, "reap_interval": 0.5}


def _context(wf: Any, fleet: WorkerFleet, channel_backend: str, **values: Any) -> ExecutionContext:
    if channel_backend == "redis":
        ctx = ExecutionContext.create(
            wf.graph,
            None,
            channel_backend="redis",
            config={"url": fleet.url, "key_prefix": fleet.key_prefix},
        )
    else:
        ctx = ExecutionContext.create(wf.graph, None)
    for key, value in values.items():
        ctx.channel.set(key, value)
    return ctx


def _cleanup_channel(ctx: ExecutionContext) -> None:
    cleanup = getattr(ctx.channel, "cleanup", None)
    if cleanup is not None:
        cleanup()


def _docker(*args: str, host: str) -> str:
    env = dict(os.environ, DOCKER_HOST=host)
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, f"docker {' '.join(args)} failed: {proc.stderr}"
    return proc.stdout


def _labelled_containers(label: str, host: str) -> list[dict[str, Any]]:
    ids = _docker("ps", "-aq", "--filter", f"label={label}", host=host).split()
    if not ids:
        return []
    env = dict(os.environ, DOCKER_HOST=host)
    proc = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, env=env, timeout=60, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    # a container removed between the listing and the inspection is gone, which is what callers wait for
    assert proc.returncode == 0 or all("No such object" in line for line in errors), (
        f"docker inspect {' '.join(ids)} failed: {proc.stderr}"
    )
    return json.loads(proc.stdout or "[]")


def _remove_labelled(label: str, host: str) -> None:
    ids = _docker("ps", "-aq", "--filter", f"label={label}", host=host).split()
    if ids:
        _docker("rm", "-f", *ids, host=host)


def _wait_until_gone(label: str, host: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    left = _labelled_containers(label, host)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _labelled_containers(label, host)
    return left


def _where() -> dict[str, Any]:
    """Where the calling task runs (evaluated remotely: everything is imported inside)."""
    import os as remote_os
    import pwd as remote_pwd
    import socket as remote_socket

    uid = remote_os.getuid()
    return {
        "hostname": remote_socket.gethostname(),
        "pid": remote_os.getpid(),
        "ppid": remote_os.getppid(),
        "uid": uid,
        "user": remote_pwd.getpwuid(uid).pw_name,
        "home": remote_os.path.expanduser("~"),
    }


# -- 1. a parallel group on Redis workers with docker, ssh and plain members ----------------------------------
@pytest.mark.docker
@pytest.mark.ssh
@pytest.mark.parametrize("channel_backend", ["memory", "redis"])
def test_redis_group_with_docker_ssh_and_plain_members(
    fleet: WorkerFleet,
    docker_settings: dict[str, Any],
    ssh_settings: dict[str, Any],
    sshd: SSHServer,
    channel_backend: str,
) -> None:
    run_label = f"graflow.test-run={uuid.uuid4().hex}"
    label_key, label_value = run_label.split("=")
    # auto_remove=False keeps the container so the test can read which process created it
    docker_kwargs = {**docker_settings, "auto_remove": False, "labels": {label_key: label_value}}

    def member(ctx: Any, kind: str) -> dict[str, Any]:
        channel = ctx.get_channel()
        channel.atomic_add("members", 1)
        channel.append("seen", kind)
        with channel.lock("tally", timeout=30):
            tally = channel.get("tally", {})
            channel.set("tally", {**tally, kind: channel.get("seed")})
        print(f"{kind} member says hello")
        return {**_where(), "kind": kind, "seed": channel.get("seed")}

    with workflow(f"xb-group-{channel_backend}") as wf:
        in_docker = task("in_docker", handler="docker", handler_kwargs=docker_kwargs, inject_context=True)(
            lambda ctx: member(ctx, "docker")
        )
        over_ssh = task("over_ssh", handler="ssh", handler_kwargs=ssh_settings, inject_context=True)(
            lambda ctx: member(ctx, "ssh")
        )
        plain = task("plain", inject_context=True)(lambda ctx: member(ctx, "plain"))
        group = ParallelGroup([in_docker, over_ssh, plain]).with_execution(
            backend="redis", backend_config=_coordinator(fleet)
        )

        @task(inject_context=True)
        def collect(ctx: Any) -> tuple[int, list[str]]:
            channel = ctx.get_channel()
            return channel.get("members"), sorted(channel.get("seen"))

        group >> collect

    ctx = _context(wf, fleet, channel_backend, seed=41, seen=[], untouched="keep me")
    try:
        try:
            result = WorkflowEngine().execute(ctx)
        except BaseException:
            print(fleet.logs())
            raise

        # results and the shared channel
        assert result == (3, ["docker", "plain", "ssh"])
        assert ctx.channel.get("members") == 3
        assert sorted(ctx.channel.get("seen")) == ["docker", "plain", "ssh"]
        assert ctx.channel.get("tally") == {"docker": 41, "ssh": 41, "plain": 41}
        assert ctx.channel.get("untouched") == "keep me"
        docker_out, ssh_out, plain_out = (ctx.get_result(t) for t in ("in_docker", "over_ssh", "plain"))
        for out in (docker_out, ssh_out, plain_out):
            assert out["seed"] == 41, f"{out['kind']} read the real channel value"

        # the plain member ran on a worker, not in this process
        assert plain_out["pid"] in fleet.pids, (plain_out, fleet.pids)

        # the docker member ran in a container (PID 1 of its own PID namespace, the container's hostname)
        # that one of the workers created (this test process may itself run in a container, so /.dockerenv
        # proves nothing here)
        assert docker_out["pid"] == 1
        assert docker_out["hostname"] != socket.gethostname()
        containers = _labelled_containers(run_label, docker_settings["docker_host"])
        assert len(containers) == 1, containers
        container = containers[0]
        assert int(container["Config"]["Labels"]["graflow.owner-pid"]) in fleet.pids
        assert container["Config"]["Hostname"] == docker_out["hostname"]

        # the ssh member ran as the dedicated test user, in that user's home
        account = pwd.getpwnam(sshd.user)
        assert ssh_out["uid"] == account.pw_uid != os.getuid()
        assert ssh_out["user"] == sshd.user
        assert ssh_out["home"] == account.pw_dir

        # each remote member's output went to a worker's log, prefixed with its task id
        logs = fleet.logs()
        assert "[in_docker] docker member says hello" in logs
        assert "[over_ssh] ssh member says hello" in logs
    finally:
        _remove_labelled(run_label, docker_settings["docker_host"])
        _cleanup_channel(ctx)


# -- 2. a docker task with retries on a worker -----------------------------------------------------------------
def _flaky_in_docker(ctx: Any, how: str) -> dict[str, Any]:
    import os as remote_os

    channel = ctx.get_channel()
    attempt = channel.atomic_add("attempts", 1)
    channel.append("hosts", _where()["hostname"])
    if attempt == 1:
        if how == "container_dies":
            remote_os._exit(3)
        raise ConnectionError("first attempt fails")
    return {"attempt": attempt, "retry_count": ctx.retry_count, **_where()}


@pytest.mark.docker
@pytest.mark.parametrize("how", ["exception", "container_dies"])
@pytest.mark.parametrize("form", ["group_member", "distributed_run"])
def test_docker_task_retried_on_a_redis_worker(
    fleet: WorkerFleet, docker_settings: dict[str, Any], form: str, how: str
) -> None:
    from graflow_redis.queue import RedisTaskQueue

    run_label = f"graflow.test-run={uuid.uuid4().hex}"
    label_key, label_value = run_label.split("=")
    docker_kwargs = {**docker_settings, "labels": {label_key: label_value}}
    policy = RetryPolicy(max_retries=2, initial_interval=0.0)

    with workflow(f"xb-retry-{form}-{how}") as wf:
        flaky = task("flaky", handler="docker", handler_kwargs=docker_kwargs, inject_context=True, retry_policy=policy)(
            lambda ctx: _flaky_in_docker(ctx, how)
        )
        steady = task("steady")(lambda: _where())
        if form == "group_member":
            ParallelGroup([flaky, steady]).with_execution(backend="redis", backend_config=_coordinator(fleet))
        else:
            flaky >> steady

    ctx = _context(wf, fleet, "redis", hosts=[])
    try:
        if form == "distributed_run":
            RedisTaskQueue(ctx, url=fleet.url, key_prefix=fleet.key_prefix, timeout=REPLY_TIMEOUT, reap_interval=0.5)
        try:
            WorkflowEngine().execute(ctx)
        except BaseException:
            print(fleet.logs())
            raise
        out = ctx.get_result("flaky")
        assert out["attempt"] == 2 and out["retry_count"] == 1
        assert out["pid"] == 1 and out["hostname"] != socket.gethostname()
        assert ctx.channel.get("attempts") == 2, "one failed attempt, one retry, no more"
        first, second = ctx.channel.get("hosts")
        assert first != second, "the retry ran in a fresh container"
        assert second == out["hostname"]
        assert ctx.get_result("steady")["pid"] in fleet.pids
        assert not _wait_until_gone(run_label, docker_settings["docker_host"]), "both containers were removed"
    finally:
        _remove_labelled(run_label, docker_settings["docker_host"])
        _cleanup_channel(ctx)


# -- 3. a whole run on workers through the subprocess, docker and ssh handlers ---------------------------------
@pytest.mark.docker
@pytest.mark.ssh
def test_distributed_chain_through_subprocess_docker_and_ssh(
    fleet: WorkerFleet, docker_settings: dict[str, Any], ssh_settings: dict[str, Any], sshd: SSHServer
) -> None:
    from graflow_redis.queue import RedisTaskQueue

    run_label = f"graflow.test-run={uuid.uuid4().hex}"
    label_key, label_value = run_label.split("=")
    docker_kwargs = {**docker_settings, "auto_remove": False, "labels": {label_key: label_value}}

    with workflow("xb-distributed-chain") as wf:

        @task(inject_context=True)
        def prepare(ctx: Any) -> int:
            ctx.get_channel().append("trail", ("prepare", _where()["pid"]))
            return 5

        @task(handler="subprocess", inject_context=True)
        def in_subprocess(ctx: Any, prepare: int) -> dict[str, Any]:
            ctx.get_channel().append("trail", ("in_subprocess", _where()["pid"]))
            return {"value": prepare * 2, **_where()}

        @task(handler="docker", handler_kwargs=docker_kwargs, inject_context=True)
        def in_docker(ctx: Any, in_subprocess: dict[str, Any]) -> dict[str, Any]:
            channel = ctx.get_channel()
            channel.append("trail", ("in_docker", _where()["pid"]))
            return {"value": in_subprocess["value"] + channel.get("bonus"), **_where()}

        @task(handler="ssh", handler_kwargs=ssh_settings, inject_context=True)
        def over_ssh(ctx: Any, in_docker: dict[str, Any]) -> dict[str, Any]:
            ctx.get_channel().append("trail", ("over_ssh", _where()["pid"]))
            return {"value": in_docker["value"] * 3, **_where()}

        @task(inject_context=True)
        def finish(ctx: Any, over_ssh: dict[str, Any]) -> tuple[int, int]:
            ctx.get_channel().append("trail", ("finish", _where()["pid"]))
            return over_ssh["value"], _where()["pid"]

        prepare >> in_subprocess >> in_docker >> over_ssh >> finish

    ctx = _context(wf, fleet, "memory", bonus=100, trail=[])
    RedisTaskQueue(ctx, url=fleet.url, key_prefix=fleet.key_prefix, timeout=REPLY_TIMEOUT, reap_interval=0.5)
    assert type(ctx.channel).__name__ == "RedisChannel", "the run's channel moved to Redis for its workers"
    try:
        try:
            value, finish_pid = WorkflowEngine().execute(ctx)
        except BaseException:
            print(fleet.logs())
            raise
        assert value == ((5 * 2) + 100) * 3
        assert [step for step, _ in ctx.channel.get("trail")] == [
            "prepare",
            "in_subprocess",
            "in_docker",
            "over_ssh",
            "finish",
        ]
        assert ctx.get_result("prepare") == 5
        assert finish_pid in fleet.pids
        trail = dict(ctx.channel.get("trail"))
        assert trail["prepare"] in fleet.pids, "plain tasks ran on a worker"

        sub = ctx.get_result("in_subprocess")
        assert sub["pid"] not in fleet.pids | {os.getpid()}
        assert sub["ppid"] in fleet.pids, "the subprocess handler's child was started by a worker"
        assert sub["uid"] == os.getuid() and sub["hostname"] == socket.gethostname()

        dock = ctx.get_result("in_docker")
        assert dock["pid"] == 1 and dock["hostname"] != socket.gethostname()
        containers = _labelled_containers(run_label, docker_settings["docker_host"])
        assert len(containers) == 1, containers
        assert containers[0]["Config"]["Hostname"] == dock["hostname"]
        assert int(containers[0]["Config"]["Labels"]["graflow.owner-pid"]) in fleet.pids, "a worker ran it"

        remote = ctx.get_result("over_ssh")
        assert remote["uid"] == pwd.getpwnam(sshd.user).pw_uid != os.getuid()
        assert remote["user"] == sshd.user
    finally:
        _remove_labelled(run_label, docker_settings["docker_host"])
        _cleanup_channel(ctx)


# -- 4. the subprocess runner cache shared by a worker and another graflow process on the machine ----------------
#: What "another graflow process" may have imported before it built its runner archive. The archive's
#: bytes (its .pyc files) depend on the interpreter's state, its file name does not; the test uses the
#: first variant whose archive differs in size from the worker's, so that storing it replaces the file.
OTHER_PROCESS_IMPORTS = ["pass", "import docker", "import paramiko", "import docker, paramiko, pytest"]

OTHER_LOCAL_RUN = """
import sys
{imports}
from graflow import task, workflow
from graflow.remote.bundle import runner_bundle

size = len(runner_bundle().data)
if size == int(sys.argv[1]):
    print("same size", size)
    sys.exit(0)
with workflow("another-local-run") as wf:
    task("local", handler="subprocess")(lambda: 42)
assert wf.execute() == 42
print("ran", size)
"""


def test_a_workers_subprocess_runner_survives_another_process_storing_its_archive(fleet: WorkerFleet) -> None:
    """A long subprocess task on a worker keeps running (and importing) while another graflow process on the
    same machine and cache folder runs its own subprocess task: both succeed.

    Regression test for runner archives whose name did not address their bytes: the .pyc files in the archive
    depend on the building interpreter's state (a process that imported the Docker SDK first built different
    bytes), the name covered only the sources, and storing replaced a same-named file of another size, so a
    runner still importing from the old file failed with ``ZipImportError: bad local file header``. The race
    is only exercised where some variant below builds bytes that differ from the worker's.
    """
    from graflow_redis.queue import RedisTaskQueue

    with workflow("xb-shared-runner-cache") as wf:

        @task(handler="subprocess", inject_context=True)
        def long_local(ctx: Any) -> str:
            import os as remote_os
            import sys as remote_sys
            import time as remote_time

            archive = next(p for p in remote_sys.path if p.endswith(".pyz"))
            channel = ctx.get_channel()
            channel.set("archive", [archive, remote_os.path.getsize(archive)])
            deadline = remote_time.monotonic() + 60
            while not channel.get("other_run_done") and remote_time.monotonic() < deadline:
                remote_time.sleep(0.05)
            import graflow.core.render  # a module of the runner's archive that this runner had not loaded

            return graflow.core.render.__name__

    ctx = _context(wf, fleet, "redis")
    RedisTaskQueue(ctx, url=fleet.url, key_prefix=fleet.key_prefix, timeout=REPLY_TIMEOUT, reap_interval=0.5)
    other_runs: list[str] = []
    errors: list[BaseException] = []

    def other_process() -> None:
        try:
            deadline = time.monotonic() + 60
            while ctx.channel.get("archive") is None and time.monotonic() < deadline:
                time.sleep(0.05)
            archive, size = ctx.channel.get("archive")
            assert Path(archive).parent == fleet.cache_dir
            for imports in OTHER_PROCESS_IMPORTS:
                proc = subprocess.run(
                    [sys.executable, "-c", OTHER_LOCAL_RUN.format(imports=imports), str(size)],
                    capture_output=True,
                    text=True,
                    env=fleet.env(),
                    timeout=60,
                    check=False,
                )
                other_runs.append(f"{imports}: exit {proc.returncode}: {proc.stdout.strip()} {proc.stderr[-2000:]}")
                assert proc.returncode == 0, other_runs[-1]
                if proc.stdout.startswith("ran"):
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
            errors.append(exc)
        finally:
            ctx.channel.set("other_run_done", True)

    helper = threading.Thread(target=other_process, name="other-graflow-process")
    helper.start()
    try:
        try:
            result = WorkflowEngine().execute(ctx)
        finally:
            helper.join(90)
        assert not errors, f"the other local run failed: {errors[0]!r}\n{other_runs}"
        assert result == "graflow.core.render", other_runs
    finally:
        _cleanup_channel(ctx)
