"""``graflow worker`` and ``python -m graflow.worker.main``: run workers from the command line.

::

    graflow worker --redis-url redis://host:6379/0 [--redis-password P] [--redis-tls]
                   [--key-prefix graflow] [--queue NAME ...] [--concurrency N] [--processes N]
                   [--shutdown-timeout 30] [--metrics-port PORT] [--max-tasks-per-child N]
                   [--worker-id ID] [--log-level INFO]

Environment fallbacks: ``GRAFLOW_REDIS_URL``, ``GRAFLOW_REDIS_PASSWORD``, ``GRAFLOW_SECRET_KEY``,
``GRAFLOW_WORKER_QUEUES`` (comma-separated), ``GRAFLOW_WORKER_CONCURRENCY``. Upstream's flags
(``--redis-host``, ``--redis-port``, ``--redis-db``, ``--redis-key-prefix``,
``--max-concurrent-tasks``, ``--poll-interval``) still work.

Without ``--processes`` one worker runs in this process; with it, a supervisor
(:mod:`graflow.worker.supervisor`) runs N worker processes and restarts them. The queue backend
comes from a plugin (``--redis-url`` selects graflow-redis); without it installed the command says
which package to install. Signals: the first SIGTERM/SIGINT drains (running tasks finish within
``--shutdown-timeout``, the rest go back to the queue) and the exit code is 0; a second one exits
at once (the tasks still running are redelivered once the heartbeat expires).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from graflow.exceptions import ConfigError, GraflowError

logger = logging.getLogger(__name__)

ENV_QUEUES = "GRAFLOW_WORKER_QUEUES"
ENV_CONCURRENCY = "GRAFLOW_WORKER_CONCURRENCY"
ENV_URL = "GRAFLOW_REDIS_URL"
#: Set by the supervisor in its children.
ENV_SUPERVISED = "GRAFLOW_WORKER_SUPERVISED"
ENV_PARENT = "GRAFLOW_WORKER_PARENT_PID"
ENV_METRICS_FILE = "GRAFLOW_WORKER_METRICS_FILE"
_LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


@dataclass
class WorkerOptions:
    """Validated settings of one ``graflow worker`` invocation."""

    redis_url: str | None = None
    redis_password: str | None = None
    redis_tls: bool = False
    key_prefix: str = "graflow"
    queues: list[str] = field(default_factory=lambda: ["default"])
    concurrency: int = 1
    processes: int | None = None
    shutdown_timeout: float = 30.0
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    max_tasks_per_child: int | None = None
    worker_id: str | None = None
    log_level: str = "INFO"
    poll_interval: float = 1.0
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float | None = None
    timeout_grace: float = 1.0
    secret_key_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every worker flag (shared by ``graflow worker`` and ``python -m graflow.worker.main``)."""
    redis = parser.add_argument_group("queue backend (graflow-redis)")
    redis.add_argument(
        "--redis-url", default=None, help="Redis URL, e.g. redis://host:6379/0 (default: $GRAFLOW_REDIS_URL)"
    )
    redis.add_argument("--redis-password", default=None, help="Redis password (default: $GRAFLOW_REDIS_PASSWORD)")
    redis.add_argument("--redis-tls", action="store_true", help="connect to Redis with TLS")
    redis.add_argument("--redis-host", default=None, help="Redis host (upstream flag; prefer --redis-url)")
    redis.add_argument("--redis-port", type=int, default=None, help="Redis port (upstream flag)")
    redis.add_argument("--redis-db", type=int, default=None, help="Redis database number (upstream flag)")
    redis.add_argument(
        "--key-prefix",
        "--redis-key-prefix",
        dest="key_prefix",
        default="graflow",
        help="key prefix shared with the producers (default: graflow)",
    )
    redis.add_argument(
        "--secret-key-file",
        default=None,
        help="file holding the shared secret for signed payloads (default: $GRAFLOW_SECRET_KEY)",
    )
    work = parser.add_argument_group("work")
    work.add_argument(
        "--queue",
        dest="queues",
        action="append",
        default=None,
        help='queue to serve (repeatable; default: $GRAFLOW_WORKER_QUEUES or "default")',
    )
    work.add_argument(
        "--concurrency",
        "--max-concurrent-tasks",
        dest="concurrency",
        type=int,
        default=None,
        help="tasks run at once per process, in threads (default: $GRAFLOW_WORKER_CONCURRENCY or 1)",
    )
    work.add_argument("--processes", type=int, default=None, help="run N worker processes under a supervisor")
    work.add_argument(
        "--autoscale",
        metavar="MIN,MAX",
        default=None,
        help="run MIN to MAX worker processes, growing with the queue and shrinking when idle",
    )
    work.add_argument(
        "--autoscale-idle",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="with --autoscale: seconds of lower demand before processes are drained (default: 30)",
    )
    work.add_argument(
        "--autoscale-interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --autoscale: seconds between two looks at the queue (default: 1)",
    )
    work.add_argument(
        "--max-tasks-per-child",
        type=int,
        default=None,
        help="replace a worker process by a fresh one after N tasks (memory hygiene)",
    )
    work.add_argument(
        "--shutdown-timeout",
        type=float,
        default=30.0,
        help="seconds running tasks get to finish after SIGTERM before they go back to the queue (default: 30)",
    )
    work.add_argument("--worker-id", default=None, help="worker id (default: host-pid-random)")
    work.add_argument(
        "--poll-interval", type=float, default=1.0, help="seconds one blocking wait on Redis lasts (default: 1)"
    )
    work.add_argument("--heartbeat-interval", type=float, default=5.0, help="seconds between heartbeats (default: 5)")
    work.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=None,
        help="seconds without heartbeat after which a worker counts as dead (default: 3 x interval)",
    )
    work.add_argument(
        "--timeout-grace",
        type=float,
        default=1.0,
        help="seconds an interrupted, timed-out task gets to stop before its process is replaced (default: 1)",
    )
    ops = parser.add_argument_group("operations")
    ops.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    ops.add_argument("--metrics-addr", default="0.0.0.0", help="address for the metrics port (default: 0.0.0.0)")
    ops.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")


def options_from_args(args: argparse.Namespace) -> WorkerOptions:
    """Resolve flags and environment fallbacks; raise ConfigError for bad values."""
    url = args.redis_url or os.environ.get(ENV_URL)
    if args.redis_host or args.redis_port is not None or args.redis_db is not None:
        if args.redis_url:
            raise ConfigError("Pass either --redis-url or --redis-host/--redis-port/--redis-db, not both")
        url = f"redis://{args.redis_host or 'localhost'}:{args.redis_port or 6379}/{args.redis_db or 0}"
    queues = args.queues
    if not queues:
        env = os.environ.get(ENV_QUEUES, "")
        queues = [q.strip() for q in env.split(",") if q.strip()] or ["default"]
    concurrency = args.concurrency
    if concurrency is None:
        env = os.environ.get(ENV_CONCURRENCY)
        try:
            concurrency = int(env) if env else 1
        except ValueError:
            raise ConfigError(f"{ENV_CONCURRENCY} must be a whole number, got {env!r}") from None
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
    if args.processes is not None and args.processes < 0:
        raise ConfigError(f"--processes must be 0 or more, got {args.processes}")
    if args.max_tasks_per_child is not None and args.max_tasks_per_child < 1:
        raise ConfigError(f"--max-tasks-per-child must be at least 1, got {args.max_tasks_per_child}")
    if args.shutdown_timeout < 0:
        raise ConfigError(f"--shutdown-timeout must be 0 or more seconds, got {args.shutdown_timeout}")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be a TCP port (0-65535), got {args.metrics_port}")
    level = str(args.log_level).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"--log-level must be DEBUG, INFO, WARNING or ERROR, got {args.log_level!r}")
    if args.metrics_port is not None:
        from graflow.worker.metrics import require_prometheus

        require_prometheus()
    known = {f for f in WorkerOptions.__dataclass_fields__}
    extra = {k: v for k, v in vars(args).items() if k not in known and not k.startswith("_")}
    return WorkerOptions(
        redis_url=url,
        redis_password=args.redis_password,
        redis_tls=bool(args.redis_tls),
        key_prefix=args.key_prefix,
        queues=list(queues),
        concurrency=concurrency,
        processes=args.processes,
        shutdown_timeout=args.shutdown_timeout,
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        max_tasks_per_child=args.max_tasks_per_child,
        worker_id=args.worker_id,
        log_level=level,
        poll_interval=args.poll_interval,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        timeout_grace=args.timeout_grace,
        secret_key_file=args.secret_key_file,
        extra=extra,
    )


def child_argv(options: WorkerOptions, worker_id: str | None, metrics_port: int | None) -> list[str]:
    """Flags that make ``python -m graflow.worker.main`` a single worker with ``options``."""
    argv = ["--key-prefix", options.key_prefix]
    if options.redis_url:
        argv += ["--redis-url", options.redis_url]
    if options.redis_tls:
        argv.append("--redis-tls")
    if options.secret_key_file:
        argv += ["--secret-key-file", options.secret_key_file]
    for name in options.queues:
        argv += ["--queue", name]
    argv += ["--concurrency", str(options.concurrency), "--shutdown-timeout", repr(options.shutdown_timeout)]
    if options.max_tasks_per_child is not None:
        argv += ["--max-tasks-per-child", str(options.max_tasks_per_child)]
    if worker_id:
        argv += ["--worker-id", worker_id]
    argv += ["--poll-interval", repr(options.poll_interval), "--heartbeat-interval", repr(options.heartbeat_interval)]
    if options.heartbeat_timeout is not None:
        argv += ["--heartbeat-timeout", repr(options.heartbeat_timeout)]
    argv += ["--timeout-grace", repr(options.timeout_grace), "--log-level", options.log_level]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port), "--metrics-addr", options.metrics_addr]
    return argv


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format=_LOG_FORMAT, stream=sys.stderr)
    root.setLevel(level)


def build_broker(options: WorkerOptions) -> Any:
    """The queue backend's broker for these options (graflow-redis's, found through the plugin registry)."""
    from graflow import plugins

    cls = plugins.get_task_queue_class("redis")
    factory = getattr(cls, "for_worker", None)
    if factory is None:
        raise ConfigError(f"The 'redis' task queue ({cls.__module__}.{cls.__qualname__}) cannot feed workers")
    secret = None
    if options.secret_key_file:
        try:
            with open(options.secret_key_file, "rb") as fh:
                secret = fh.read().strip()
        except OSError as exc:
            raise ConfigError(f"Cannot read --secret-key-file {options.secret_key_file}: {exc}") from exc
        if not secret:
            raise ConfigError(f"--secret-key-file {options.secret_key_file} is empty")
    return factory(
        url=options.redis_url,
        password=options.redis_password,
        tls=True if options.redis_tls else None,
        key_prefix=options.key_prefix,
        secret_key=secret,
    )


def make_worker(options: WorkerOptions, broker: Any) -> Any:
    from graflow.worker.worker import TaskWorker

    parent = os.environ.get(ENV_PARENT)
    return TaskWorker(
        broker,
        worker_id=options.worker_id,
        concurrency=options.concurrency,
        queues=options.queues,
        shutdown_timeout=options.shutdown_timeout,
        heartbeat_interval=options.heartbeat_interval,
        heartbeat_timeout=options.heartbeat_timeout,
        poll_interval=options.poll_interval,
        max_tasks=options.max_tasks_per_child,
        metrics_port=options.metrics_port,
        metrics_addr=options.metrics_addr,
        timeout_grace=options.timeout_grace,
        watch_parent=int(parent) if parent and parent.isdigit() else None,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``graflow worker``; returns the exit code."""
    try:
        options = options_from_args(args)
    except ConfigError as exc:
        sys.stderr.write(f"graflow worker: {exc}\n")
        return 2
    configure_logging(options.log_level)
    if getattr(args, "autoscale", None) is not None:
        from graflow.worker.autoscale import run_autoscaled

        return run_autoscaled(
            options, args.autoscale, scale_down_after=args.autoscale_idle, interval=args.autoscale_interval
        )
    if options.processes is not None:
        from graflow.worker.supervisor import run_supervisor

        return run_supervisor(options)
    return run_single(options)


def run_single(options: WorkerOptions) -> int:
    """One worker in this process until a signal drains it."""
    from graflow.worker.worker import EXIT_ERROR, EXIT_RECYCLE

    try:
        broker = build_broker(options)
        worker = make_worker(options, broker)
    except GraflowError as exc:
        sys.stderr.write(f"graflow worker: {exc}\n")
        return 2
    install_signal_handlers(worker.request_stop, f"finishing running tasks (up to {options.shutdown_timeout:g}s)")
    try:
        worker.start()
    except Exception as exc:  # noqa: BLE001 - Redis down at start: one clear line, not a traceback
        sys.stderr.write(f"graflow worker: cannot start: {type(exc).__name__}: {exc}\n")
        broker.close()
        return EXIT_ERROR
    metrics_file = os.environ.get(ENV_METRICS_FILE)
    if metrics_file and worker.bound_metrics_port is not None:
        _write_atomically(metrics_file, str(worker.bound_metrics_port))
    code = worker.run()
    broker.close()
    if code == EXIT_RECYCLE and not os.environ.get(ENV_SUPERVISED):
        # No supervisor to start a fresh process: become one (same pid, same flags).
        logger.warning("worker %s: %s; restarting this process", worker.worker_id, worker.exit_reason)
        sys.stderr.flush()
        argv = child_argv(options, options.worker_id, options.metrics_port)
        os.execv(sys.executable, [sys.executable, "-m", "graflow.worker.main", *argv])
    return code


def install_signal_handlers(request_stop: Any, draining: str) -> None:
    """First SIGTERM/SIGINT: ``request_stop``; second: exit at once (128 + signal number)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    received = {"count": 0}

    def handler(signum: int, frame: Any) -> None:
        received["count"] += 1
        name = signal.Signals(signum).name
        if received["count"] == 1:
            _say(f"graflow worker: received {name}: {draining}; send it again to exit at once\n")
            request_stop(f"received {name}")
        else:
            _say(f"graflow worker: received {name} again: exiting now; unfinished tasks will be redelivered\n")
            os._exit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _say(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class WorkerCommand:
    """``graflow worker``: registered by core's plugin through ``graflow_register_commands``."""

    name = "worker"
    help = "run workers that take tasks from a distributed queue (Redis)"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = "Run Graflow workers fed by a distributed queue (graflow-redis)."
        add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        return run(args)


__all__ = [
    "WorkerCommand",
    "WorkerOptions",
    "add_arguments",
    "build_broker",
    "child_argv",
    "options_from_args",
    "run",
    "run_single",
]
