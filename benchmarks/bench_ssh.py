"""SSH handler benchmark: per-task overhead of a no-op task over a pooled connection, next to bare SSH.

Usage::

    python benchmarks/bench_ssh.py [--quick] [--json [PATH]] [--reps N]

It starts its own ``sshd`` on 127.0.0.1 (``graflow_testkit.services.sshd``: a dedicated login user,
its own host and client keys) and measures, in the same run, against that server:

* ``openssh``: ``ssh -i KEY -p PORT user@127.0.0.1 true`` through the OpenSSH client, a subprocess
  per run: a new connection, key exchange and login each time.
* ``paramiko``: ``exec_command("true")`` on an already-open paramiko connection: open a channel,
  run the command, wait for its exit status, close the channel. This is the floor: the least a
  command over an established SSH connection costs.
* ``cold``: a workflow of one no-op ``@task(handler="ssh")`` run by the engine with ``reuse=False``
  over the pooled connection, the runner bundle already cached on the host: a channel and a fresh
  ``python3`` runner process per task (start-up, handshake, the call, exit).
* ``warm``: a chain of N no-op tasks on a handler with ``reuse=True`` after one warm-up task: one
  warm runner serves them all, so a task costs a round trip or two on the open channel.

Target (issue 7): ``warm`` within 3x of ``paramiko`` once the runner is cached. ``cold`` is
reported against the same floor for information (it is dominated by the remote interpreter's
start-up). Runs of openssh, paramiko and cold alternate so machine noise hits them alike; medians
are reported. A missed target is reported, not fatal; the exit status is non-zero only when
something crashes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sources import use_packages

use_packages("graflow-core", "graflow-testkit", "graflow-ssh")

import paramiko  # noqa: E402
from handler_chain import seconds_per_task  # noqa: E402

from graflow_ssh import SSHTaskHandler  # noqa: E402
from graflow_testkit.services.sshd import SSHServer  # noqa: E402

WARM_RATIO_TARGET = 3.0
NAME = "bench-ssh"


def openssh_true(server: SSHServer) -> float:
    started = time.perf_counter()
    subprocess.run(server.ssh_argv("true"), check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def paramiko_true(client: paramiko.SSHClient) -> float:
    started = time.perf_counter()
    _, stdout, _ = client.exec_command("true")
    status = stdout.channel.recv_exit_status()
    stdout.channel.close()
    elapsed = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"'true' exited with {status}")
    return elapsed


def run_chain(handler: SSHTaskHandler, n: int) -> float:
    return seconds_per_task(handler, n, NAME)


def measure(server: SSHServer, reps: int, warm_tasks: int) -> list[dict[str, Any]]:
    settings = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "key_filename": str(server.client_key),
        "known_hosts": str(server.known_hosts),
        "allow_agent": False,
    }
    client = paramiko.SSHClient()
    client.load_system_host_keys(str(server.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        server.host,
        port=server.port,
        username=server.user,
        key_filename=str(server.client_key),
        allow_agent=False,
        look_for_keys=False,
    )
    cold_handler = SSHTaskHandler(**settings)
    warm_handler = SSHTaskHandler(**settings, reuse=True, pool_size=1)
    try:
        # warm-ups: connections open, the runner bundle shipped and cached, the warm runner started
        openssh_true(server)
        paramiko_true(client)
        run_chain(cold_handler, 1)
        run_chain(warm_handler, 1)
        openssh: list[float] = []
        bare: list[float] = []
        cold: list[float] = []
        for _ in range(reps):
            openssh.append(openssh_true(server))
            bare.append(paramiko_true(client))
            cold.append(run_chain(cold_handler, 1))
        warm_rounds = [run_chain(warm_handler, warm_tasks) for _ in range(3)]
        # the floor once more after the warm rounds, so a slow patch of the machine shows on both sides
        bare.extend(paramiko_true(client) for _ in range(reps))
        connections = len(cold_handler.connections())
    finally:
        cold_handler.close()
        warm_handler.close()
        client.close()
    if connections != 1:
        raise RuntimeError(f"expected one pooled connection for the cold runs, found {connections}")
    floor = statistics.median(bare) * 1000
    rows = [
        {"metric": "paramiko exec true", "value": floor, "floor": floor, "target": "floor"},
        {"metric": "openssh ssh true", "value": statistics.median(openssh) * 1000, "floor": floor, "target": "info"},
        {"metric": "graflow cold task", "value": statistics.median(cold) * 1000, "floor": floor, "target": "info"},
        {
            "metric": "graflow warm task",
            "value": min(warm_rounds) * 1000,
            "floor": floor,
            "target": f"<= {WARM_RATIO_TARGET:g}x",
        },
    ]
    for row in rows:
        row["ratio"] = row["value"] / floor
        row["ok"] = row["ratio"] <= WARM_RATIO_TARGET if row["target"].startswith("<=") else None
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (a smoke test)")
    parser.add_argument(
        "--json", metavar="PATH", nargs="?", const="-", help="also write the rows as JSON (to PATH, or stdout)"
    )
    parser.add_argument("--reps", type=int, default=None, help="runs of openssh, paramiko, cold (20; 5 quick)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    reps = args.reps or (5 if args.quick else 20)
    warm_tasks = 20 if args.quick else 100
    with SSHServer() as server:
        rows = measure(server, reps, warm_tasks)
    header = f"{'metric':<20} {'value':>10} {'floor':>10} {'ratio':>7}  target"
    print(
        f"graflow-ssh over loopback sshd, {reps} runs each of openssh/paramiko/cold, {warm_tasks} warm tasks per "
        f"chain (best of 3), {os.cpu_count()} CPUs"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        verdict = "" if row["ok"] is None else ("OK" if row["ok"] else "MISS")
        print(
            f"{row['metric']:<20} {row['value']:>7.2f} ms {row['floor']:>7.2f} ms {row['ratio']:>6.2f}x  "
            f"{row['target']} {verdict}".rstrip()
        )
    if args.json:
        payload = json.dumps({"reps": reps, "warm_tasks": warm_tasks, "rows": rows}, indent=2)
        if args.json == "-":
            print(payload)
        else:
            Path(args.json).write_text(payload + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
