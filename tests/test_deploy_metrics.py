"""The Grafana dashboard and the Prometheus alerts only use what a real worker exports.

A redis-server and a ``graflow worker --metrics-port`` process are started, a workflow with
succeeding, retried and failing tasks runs on it, and the worker's ``/metrics`` is scraped and
parsed with prometheus_client. Every query of ``deploy/grafana/graflow-workers.json`` and
``deploy/prometheus/alerts.yml`` is parsed with a PromQL parser (promql-parser, installed with pip
into a cache folder on first use), and every metric name, label matcher and ``by (...)`` label in
it must exist on the scraped samples. The health probe of the image is run against the same worker.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from graflow_testkit.services.redis import RedisServer, free_port, start_or_skip

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "graflow-workers.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
SOURCES = [ROOT / "packages" / p / "src" for p in ("graflow-core", "graflow-redis", "graflow-testkit")]
TOOLS_CACHE = Path(os.environ.get("GRAFLOW_TEST_TOOLS", Path(tempfile.gettempdir()) / "graflow-test-tools"))
PROMQL_PARSER = "promql-parser==0.11.0"

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$queue": ".*", "$worker": ".*"}


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


@pytest.fixture(scope="module")
def promql() -> Any:
    """The promql_parser module (installed alone into its own cache folder)."""
    target = TOOLS_CACHE / "promql"
    marker = target / ".graflow-installed"
    if not (marker.exists() and marker.read_text() == PROMQL_PARSER):
        TOOLS_CACHE.mkdir(parents=True, exist_ok=True)
        with open(TOOLS_CACHE / "promql.lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            if not (marker.exists() and marker.read_text() == PROMQL_PARSER):
                shutil.rmtree(target, ignore_errors=True)
                proc = pip_install_target(target, [PROMQL_PARSER])
                if proc.returncode != 0:
                    message = f"cannot pip install {PROMQL_PARSER}: {proc.stderr.strip()[-800:]}"
                    if _in_ci():
                        pytest.fail(message, pytrace=False)
                    pytest.skip(message)
                marker.write_text(PROMQL_PARSER)
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))
    import promql_parser

    return promql_parser


# -- the queries -----------------------------------------------------------------------------------------


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    return found


def alert_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable left in {expr!r}"
    return expr


class Usage:
    """Metric names, matcher labels and grouping labels one query uses."""

    def __init__(self) -> None:
        self.selectors: list[tuple[str, set[str]]] = []  # (metric, labels in matchers)
        self.groupings: list[tuple[set[str], list[str]]] = []  # (by labels, metrics beneath)


def analyse(promql: Any, expr: str) -> Usage:
    usage = Usage()

    def visit(node: Any) -> list[str]:
        """Visit ``node``; return the metric names of the selectors beneath it."""
        kind = type(node).__name__
        if kind == "VectorSelector":
            assert node.name, f"selector without a metric name in {expr!r}"
            usage.selectors.append((node.name, {m.name for m in node.matchers.matchers}))
            return [node.name]
        if kind == "MatrixSelector":
            return visit(node.vector_selector)
        if kind == "AggregateExpr":
            beneath = visit(node.expr)
            if node.param is not None:
                visit(node.param)
            if node.modifier is not None and str(node.modifier.type).endswith("By"):
                usage.groupings.append((set(node.modifier.labels), beneath))
            return beneath
        if kind == "BinaryExpr":
            return visit(node.lhs) + visit(node.rhs)
        if kind == "Call":
            return [name for arg in node.args for name in visit(arg)]
        if kind in {"ParenExpr", "UnaryExpr", "SubqueryExpr"}:
            return visit(node.expr)
        if kind in {"NumberLiteral", "StringLiteral"}:
            return []
        raise AssertionError(f"unexpected PromQL node {kind} in {expr!r}")

    visit(promql.parse(expr))
    return usage


def test_every_dashboard_and_alert_query_parses_as_promql(promql: Any) -> None:
    queries = dashboard_queries() + alert_queries()
    assert len(queries) >= 25
    for where, expr in queries:
        try:
            promql.parse(substitute(expr))
        except ValueError as exc:
            pytest.fail(f"{where}: {exc}\n{expr}")
    # The parser is strict enough to matter.
    broken_queries = (
        "sum(rate(graflow_tasks_processed_total[1m])", "rate(graflow_queue_depth)[", "histogram_quantile(0.9,"
    )
    for broken in broken_queries:
        with pytest.raises(ValueError):
            promql.parse(broken)


def test_dashboard_json_is_what_make_dashboard_writes() -> None:
    maker = _load(DEPLOY / "grafana" / "make_dashboard.py", "graflow_make_dashboard")
    assert DASHBOARD.read_text() == maker.render(), "run `python deploy/grafana/make_dashboard.py`"


def test_dashboard_shows_every_view_the_fleet_needs(promql: Any) -> None:
    board = json.loads(DASHBOARD.read_text())
    exprs = [e for _, e in dashboard_queries()]
    text = "\n".join(exprs)
    for counter in ("processed", "succeeded", "failed", "retried", "redelivered"):
        assert f"rate(graflow_tasks_{counter}_total" in text, counter
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(graflow_task_duration_seconds_bucket" in text, q
    groupings = [g for e in exprs for g, _ in analyse(promql, substitute(e)).groupings]
    assert {"queue"} in groupings and {"worker"} in groupings  # per queue and per worker views
    assert {"queue", "le"} in groupings and {"worker", "le"} in groupings  # latency per queue / worker
    for metric in ("graflow_queue_depth", "graflow_dead_letter_depth", "graflow_active_tasks",
                   "graflow_worker_last_heartbeat_timestamp_seconds"):
        assert metric in text, metric
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert set(variables) == {"datasource", "queue", "worker"}
    # Every panel's data source is the dashboard's data source variable, so it works on any Grafana.
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in board["panels"]
               if p["type"] != "row")
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    # Panels do not overlap on the grid.
    cells = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another at {(x, y)}"
                cells.add((x, y))


def test_alert_rules_are_well_formed() -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    assert set(rules) == {"groups"}
    names = []
    for group in rules["groups"]:
        assert set(group) == {"name", "rules"}
        for rule in group["rules"]:
            assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
            assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
            assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert set(rule["annotations"]) == {"summary", "description"}
            names.append(rule["alert"])
    assert len(names) == len(set(names))
    assert {"GraflowDeadLetterQueueGrowing", "GraflowNoLiveWorkers", "GraflowQueueOnlyGrows"} <= set(names)


# -- against a real worker ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = start_or_skip()
    try:
        yield server
    finally:
        server.cleanup()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in SOURCES)
    return env


class Worker:
    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / "worker.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "graflow.worker.main", "--redis-url", redis_url, "--metrics-port",
                 str(self.port), "--worker-id", "metrics-probe", "--queue", "default", "--concurrency", "2"],
                stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True,
            )

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=3) as response:
            return response.read().decode()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if "graflow_worker_last_heartbeat_timestamp_seconds" in self.scrape():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"worker metrics never came up:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


WORKLOAD = textwrap.dedent(
    """
    import json, sys
    import redis
    from graflow import RetryPolicy, task, workflow
    from graflow.core.context import ExecutionContext
    from graflow.core.engine import WorkflowEngine
    from graflow.queue.redis import RedisTaskQueue

    @task
    def ok():
        return 1

    @task(inject_context=True, retry_policy=RetryPolicy(max_retries=2, initial_interval=0.01))
    def flaky(ctx, ok):
        if ctx.get_channel().atomic_add("flaky_attempts", 1) == 1:
            raise ConnectionError("first attempt fails")
        return ok + 1

    @task
    def broken(flaky):
        raise ValueError("this task always fails")

    client = redis.Redis.from_url(sys.argv[1])
    with workflow("metrics_probe") as wf:
        ok >> flaky >> broken
    ctx = ExecutionContext.create(wf.graph, "ok", channel_backend="redis",
                                  config={"redis_client": client, "key_prefix": "graflow"})
    RedisTaskQueue(ctx, redis_client=client, key_prefix="graflow")
    try:
        WorkflowEngine().execute(ctx)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    else:
        print(json.dumps({"error": None}))
    """
)


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp("metrics-worker")
    w = Worker(redis_server.url, tmp)
    try:
        w.wait_ready()
        script = tmp / "workload.py"
        script.write_text(WORKLOAD)
        proc = subprocess.run(
            [sys.executable, str(script), redis_server.url], capture_output=True, text=True,
            timeout=180, env=_env(), check=False,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outcome = json.loads(proc.stdout.strip().splitlines()[-1])
        assert outcome["error"] is not None and "always fails" in outcome["message"], outcome
        yield w
    finally:
        w.stop()


@pytest.fixture(scope="module")
def exported(worker: Worker) -> dict[str, set[str]]:
    """Sample name -> label names, from the real worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(worker.scrape()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


@pytest.mark.redis
def test_the_worker_exports_the_agreed_metrics(exported: dict[str, set[str]], worker: Worker) -> None:
    for counter in ("processed", "succeeded", "failed", "retried", "redelivered"):
        assert exported[f"graflow_tasks_{counter}_total"] >= {"queue", "worker"}, counter
    for suffix in ("_bucket", "_sum", "_count"):
        assert exported[f"graflow_task_duration_seconds{suffix}"] >= {"queue", "worker"}
    assert "le" in exported["graflow_task_duration_seconds_bucket"]
    assert exported["graflow_active_tasks"] >= {"worker"}
    assert exported["graflow_queue_depth"] >= {"queue"}
    assert exported["graflow_dead_letter_depth"] >= {"queue"}
    assert exported["graflow_worker_last_heartbeat_timestamp_seconds"] >= {"worker"}
    # And they counted the workload: ok, flaky (twice) and broken ran.
    from prometheus_client.parser import text_string_to_metric_families

    values = {
        s.name: s.value
        for f in text_string_to_metric_families(worker.scrape())
        for s in f.samples
        if s.labels.get("queue") == "default" and s.name.startswith("graflow_tasks_")
    }
    assert values["graflow_tasks_failed_total"] >= 1
    assert values["graflow_tasks_succeeded_total"] >= 2


@pytest.mark.redis
@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_queries_use_only_metrics_and_labels_the_worker_exports(
    source: str, promql: Any, exported: dict[str, set[str]]
) -> None:
    queries = dashboard_queries() if source == "dashboard" else alert_queries()
    for where, expr in queries:
        usage = analyse(promql, substitute(expr))
        for metric, labels in usage.selectors:
            assert metric in exported, f"{where}: {metric} is not exported by the worker (has {sorted(exported)})"
            missing = labels - exported[metric]
            assert not missing, f"{where}: {metric} has no label(s) {sorted(missing)}"
        for by, metrics in usage.groupings:
            for metric in metrics:
                missing = by - exported[metric]
                assert not missing, f"{where}: `by ({', '.join(sorted(by))})` over {metric}, which lacks {missing}"
    if source == "dashboard":
        board = json.loads(DASHBOARD.read_text())
        for variable in board["templating"]["list"]:
            query = variable.get("definition", "")
            match = re.fullmatch(r"label_values\((\w+), (\w+)\)", query)
            if match:
                assert match.group(2) in exported[match.group(1)], query


@pytest.mark.redis
def test_analysis_catches_unknown_metrics_and_labels(promql: Any, exported: dict[str, set[str]]) -> None:
    usage = analyse(promql, 'sum by (pod) (rate(graflow_tasks_processd_total{queue="x"}[1m]))')
    assert usage.selectors == [("graflow_tasks_processd_total", {"queue"})]
    assert "graflow_tasks_processd_total" not in exported
    usage = analyse(promql, "sum by (queue) (graflow_active_tasks)")
    (by, metrics), = usage.groupings
    assert by - exported[metrics[0]] == {"queue"}  # active tasks are per worker only


@pytest.mark.redis
def test_health_probe_against_the_real_worker(worker: Worker) -> None:
    probe = DEPLOY / "docker" / "healthcheck.py"

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(probe)], capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "GRAFLOW_METRICS_PORT": str(worker.port), **env},
        )

    healthy = run()
    assert healthy.returncode == 0 and healthy.stdout.startswith("healthy:"), healthy.stdout
    stale = run(GRAFLOW_HEALTH_MAX_AGE="0")
    assert stale.returncode == 1 and "heartbeat" in stale.stdout, stale.stdout
    nobody = run(GRAFLOW_METRICS_PORT=str(free_port()))
    assert nobody.returncode == 1 and "does not answer" in nobody.stdout
    bad = run(GRAFLOW_HEALTH_MAX_AGE="soon")
    assert bad.returncode == 1 and "GRAFLOW_HEALTH_MAX_AGE" in bad.stdout


@pytest.mark.redis
def test_health_probe_fails_when_the_heartbeat_stops(worker: Worker) -> None:
    """A frozen worker (SIGSTOP: heartbeat thread and HTTP server stop together) is unhealthy."""
    probe = _load(DEPLOY / "docker" / "healthcheck.py", "graflow_healthcheck")
    url = f"http://127.0.0.1:{worker.port}/metrics"
    ok, reason = probe.check(url, max_age=60, timeout=3)
    assert ok, reason
    newest = max(v for _, v in probe.heartbeats(worker.scrape()))
    # The same sample, judged two minutes later, is stale.
    ok, reason = probe.check(url, max_age=60, timeout=3, now=newest + 120)
    assert not ok and "heartbeat thread is stuck" in reason
    os.kill(worker.proc.pid, signal.SIGSTOP)
    try:
        ok, reason = probe.check(url, max_age=60, timeout=1)
        assert not ok and "does not answer" in reason
    finally:
        os.kill(worker.proc.pid, signal.SIGCONT)
    ok, reason = probe.check(url, max_age=60, timeout=3)
    assert ok, reason


@pytest.mark.redis
def test_keda_watches_the_list_producers_fill_and_workers_drain(tmp_path: Path) -> None:
    """The ScaledObject's listName is the Redis list a waiting task sits in (so KEDA wakes a fleet
    scaled to zero) and that list empties once a worker takes the task."""
    scaled = yaml.safe_load((DEPLOY / "kubernetes" / "components" / "keda" / "scaledobject.yaml").read_text())
    list_name = scaled["spec"]["triggers"][0]["metadata"]["listName"]
    server = start_or_skip()
    producer = None
    worker = None
    try:
        client = server.client()
        script = tmp_path / "one_task.py"
        script.write_text(textwrap.dedent(
            """
            import sys
            import redis
            from graflow import task, workflow
            from graflow.core.context import ExecutionContext
            from graflow.core.engine import WorkflowEngine
            from graflow.queue.redis import RedisTaskQueue

            client = redis.Redis.from_url(sys.argv[1])
            with workflow("keda_probe") as wf:
                @task
                def lonely():
                    return "done"
            ctx = ExecutionContext.create(wf.graph, "lonely", channel_backend="redis",
                                          config={"redis_client": client, "key_prefix": "graflow"})
            RedisTaskQueue(ctx, redis_client=client, key_prefix="graflow")
            print(WorkflowEngine().execute(ctx))
            """
        ))
        producer = subprocess.Popen([sys.executable, str(script), server.url], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=_env())
        deadline = time.monotonic() + 60
        while client.llen(list_name) < 1:
            assert producer.poll() is None, producer.communicate()
            assert time.monotonic() < deadline, f"nothing arrived in {list_name}: keys {client.keys('*')}"
            time.sleep(0.05)
        assert client.llen(list_name) == 1  # no worker yet: KEDA would see 1 > activationListLength 0
        worker = Worker(server.url, tmp_path)
        out, err = producer.communicate(timeout=120)
        assert producer.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == "done"
        assert client.llen(list_name) == 0
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
            producer.wait()
        if worker is not None:
            worker.stop()
        server.cleanup()
