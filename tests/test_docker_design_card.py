"""The design card's Docker path, from built artifacts only.

``pip install graflow-core graflow-docker`` (the wheels built here, their third-party dependencies
from the index) into a fresh virtualenv outside the repository, then a workflow with
``@task(handler="docker", handler_kwargs={"image": ...})`` runs from a directory outside the
repository too. Nothing here imports the working tree. The Docker engine and the offline base
image come from ``graflow_testkit.services.docker``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from graflow_testkit.services.docker import require_base_image

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"graflow-core": "packages/graflow-core", "graflow-docker": "packages/graflow-docker"}

pytestmark = [pytest.mark.docker, pytest.mark.slow, pytest.mark.timeout(1800)]

SCRIPT = """
import json
import sys

import graflow
import graflow_docker
from graflow import task, workflow

IMAGE = sys.argv[1]

with workflow("design-card") as wf:

    @task
    def numbers() -> list[int]:
        return [5, 3, 8, 1]

    @task(handler="docker", handler_kwargs={"image": IMAGE})
    def crunch(numbers: list[int]) -> dict:
        import os
        import socket

        with open("/etc/os-release") as fh:
            os_name = next(line for line in fh if line.startswith("VERSION_CODENAME=")).split("=", 1)[1].strip()
        return {"sorted": sorted(numbers), "total": sum(numbers), "pid": os.getpid(),
                "host": socket.gethostname(), "os": os_name, "python": sys.executable}

    @task
    def report(crunch: dict) -> dict:
        return crunch

    numbers >> crunch >> report
    result = wf.execute()

print(json.dumps({
    "result": result,
    "graflow_file": graflow.__file__,
    "graflow_docker_file": graflow_docker.__file__,
    "here": __import__("socket").gethostname(),
}))
"""


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GRAFLOW_DISABLE_PLUGINS", "GRAFLOW_TRACE_PLUGINS"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900) -> str:
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=env or _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(
            f"command failed with exit code {proc.returncode}: {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


def _outside_repo(path: Path) -> Path:
    assert not path.resolve().is_relative_to(REPO), f"{path} must be outside the repository {REPO}"
    return path


def test_pip_install_core_and_docker_then_run_a_task_in_a_container(tmp_path_factory: pytest.TempPathFactory):
    image = require_base_image()
    dist_dir = _outside_repo(tmp_path_factory.mktemp("docker-dist"))

    def build(dist: str) -> Path:
        target = dist_dir / dist
        _run(
            [
                sys.executable,
                "-m",
                "build",
                "--wheel",
                "--installer",
                "uv",
                "--outdir",
                str(target),
                str(REPO / FOLDERS[dist]),
            ],
            cwd=dist_dir,
        )
        (wheel,) = sorted(target.glob("*.whl"))
        return wheel

    with ThreadPoolExecutor(max_workers=2) as pool:
        wheels = dict(zip(FOLDERS, pool.map(build, FOLDERS)))
    assert wheels["graflow-docker"].name == "graflow_docker-0.3.0-py3-none-any.whl"

    root = _outside_repo(tmp_path_factory.mktemp("docker-venv"))
    workdir = _outside_repo(tmp_path_factory.mktemp("docker-work"))
    _run([sys.executable, "-m", "venv", str(root)], cwd=workdir)
    python = root / "bin" / "python"
    # Graflow's distributions can only come from the wheels named here; docker, requests,
    # cloudpickle and pluggy come from the index.
    _run([str(python), "-m", "pip", "install", "--no-cache-dir", *map(str, wheels.values())], cwd=workdir)

    script = workdir / "card.py"
    script.write_text(textwrap.dedent(SCRIPT), encoding="utf-8")
    env = _clean_env()
    env["VIRTUAL_ENV"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    out = _run([str(python), str(script), image], cwd=workdir, env=env, timeout=300)
    report = json.loads([line for line in out.splitlines() if line.strip()][-1])

    for key in ("graflow_file", "graflow_docker_file"):
        assert Path(report[key]).resolve().is_relative_to(root.resolve()), report[key]
    result = report["result"]
    assert result["sorted"] == [1, 3, 5, 8] and result["total"] == 17
    # it ran in a container: PID 1, the image's own interpreter and OS, another host name
    assert result["pid"] == 1
    assert result["python"] == "/usr/bin/python3"
    assert result["os"] == "bookworm"
    assert result["host"] != report["here"]
