#!/usr/bin/env python3
"""Fill ``deploy/docker/wheels/`` so the worker image builds with no package index (CI, air-gapped).

It builds the wheels of this repository's distributions (graflow-core and graflow-redis, plus any
``--project`` you add), resolves their dependencies for the Python version *inside the image*
(``--python-version``; markers such as ``python_full_version < '3.11.3'`` depend on it), downloads
those dependency wheels, and adds a pip wheel so base images without pip can still install. Then::

    docker build --build-arg BASE_IMAGE=graflow-test/python:3.11 -t graflow-worker:dev deploy/docker

Resolution uses ``uv pip compile`` (uv evaluates markers for a target Python, pip cannot); the
wheels are built with ``uv build`` when uv is there, else ``pip wheel``. Needs the package index
once, here; the ``docker build`` that follows needs nothing.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DEFAULT_PROJECTS = ("packages/graflow-core", "packages/graflow-redis")
#: What the image installs (the Dockerfile's GRAFLOW_REQUIREMENTS uses the same names and extras).
DEFAULT_REQUIREMENTS = ("graflow-core[metrics]", "graflow-redis[metrics]")


class WheelhouseError(RuntimeError):
    """A step failed; the message names the command and how to fix it."""


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 900) -> str:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        proc = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise WheelhouseError(f"cannot run {argv[0]!r}: {exc}") from exc
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise WheelhouseError(f"`{' '.join(argv)}` failed with exit code {proc.returncode}:\n{tail}")
    return proc.stdout


def project_version(project: Path) -> str:
    """The ``__version__`` of a project's ``src/<pkg>/__about__.py``."""
    abouts = sorted(project.glob("src/*/__about__.py"))
    if len(abouts) != 1:
        raise WheelhouseError(f"{project} should have exactly one src/<package>/__about__.py, found {len(abouts)}")
    for node in ast.parse(abouts[0].read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return str(ast.literal_eval(node.value))
    raise WheelhouseError(f"{abouts[0]} does not set __version__")


def uv_command() -> list[str] | None:
    """How to run uv here (the ``uv`` binary, or ``python -m uv``), or None."""
    found = shutil.which("uv")
    if found:
        return [found]
    probe = subprocess.run([sys.executable, "-m", "uv", "--version"], capture_output=True, check=False)
    return [sys.executable, "-m", "uv"] if probe.returncode == 0 else None


def pip_command(uv: list[str] | None) -> list[str]:
    """How to run pip: this interpreter's, or (in an environment made by uv, which has none) pip in
    a throw-away uv tool environment."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    if uv is not None:
        return [*uv, "tool", "run", "--from", "pip", "pip"]
    raise WheelhouseError("neither pip nor uv is available here; install one of them (`python -m ensurepip`)")


def build_wheels(projects: list[Path], out: Path, uv: list[str] | None) -> list[Path]:
    built = []
    for project in projects:
        if not (project / "pyproject.toml").is_file():
            raise WheelhouseError(f"{project} has no pyproject.toml; --project takes a distribution folder")
        before = set(out.glob("*.whl"))
        if uv is not None:
            _run([*uv, "build", "--wheel", "--out-dir", str(out), str(project)])
        else:
            _run([*pip_command(None), "wheel", "--no-deps", "--wheel-dir", str(out), str(project)])
        new = sorted(set(out.glob("*.whl")) - before)
        if not new:
            raise WheelhouseError(f"building {project} produced no wheel in {out}")
        built.extend(new)
    return built


def resolve(requirements: list[str], wheels_dir: Path, python_version: str, uv: list[str]) -> list[str]:
    """Pinned third-party requirements (``name==version``) for ``requirements`` on ``python_version``."""
    with tempfile.TemporaryDirectory() as tmp:
        req_in = Path(tmp, "requirements.in")
        req_in.write_text("\n".join(requirements) + "\n", encoding="utf-8")
        out = _run([
            *uv, "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--no-strip-extras",
            "--python-version", python_version, "--find-links", str(wheels_dir), str(req_in),
        ])
    pins = []
    for line in out.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            pins.append(line)
    return pins


def make_wheelhouse(
    out: Path,
    python_version: str,
    projects: list[Path] | None = None,
    requirements: list[str] | None = None,
) -> list[Path]:
    """Build, resolve and download into ``out`` (its old ``*.whl`` are removed first); return the wheels."""
    projects = projects or [REPO / p for p in DEFAULT_PROJECTS]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    uv = uv_command()
    if uv is None:
        raise WheelhouseError(
            "uv is needed to resolve dependencies for the image's Python version; install it with `pip install uv`"
        )
    own = build_wheels(projects, out, uv)
    own_names = {w.name.split("-", 1)[0].lower().replace("_", "-") for w in own}
    if requirements is None:
        versions = {p.name: project_version(p) for p in projects}
        requirements = [
            f"{req}=={versions[req.split('[', 1)[0]]}"
            for req in DEFAULT_REQUIREMENTS
            if req.split("[", 1)[0] in versions
        ]
    pins = resolve(requirements, out, python_version, uv)
    third_party = []
    for pin in pins:
        name, _, version = pin.partition("==")
        # Bare names: extras are resolved already (their packages are pins of their own).
        name = name.split("[", 1)[0].strip()
        if name.lower().replace("_", "-") not in own_names:
            third_party.append(f"{name}=={version}" if version else name)
    download = [
        *pip_command(uv), "download", "--no-deps", "--only-binary=:all:",
        "--python-version", python_version, "--dest", str(out), "pip", *third_party,
    ]
    _run(download)
    return sorted(out.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--out", type=Path, default=HERE / "wheels", help="wheelhouse folder (default: %(default)s)")
    parser.add_argument(
        "--python-version",
        default=platform.python_version(),
        help="full Python version inside the image, e.g. 3.11.2 for Debian bookworm, 3.11.9 for python:3.11-slim "
        "(default: this interpreter's, %(default)s)",
    )
    parser.add_argument(
        "--project", action="append", type=Path, default=None,
        help="a distribution folder to build (repeatable; default: graflow-core and graflow-redis)",
    )
    parser.add_argument(
        "--requirement", action="append", default=None,
        help="what the image installs (repeatable; default: graflow-core[metrics] and graflow-redis[metrics] at "
        "the repository's versions)",
    )
    args = parser.parse_args(argv)
    projects = [p.resolve() for p in args.project] if args.project else None
    try:
        wheels = make_wheelhouse(args.out.resolve(), args.python_version, projects, args.requirement)
    except WheelhouseError as exc:
        print(f"wheelhouse: error: {exc}", file=sys.stderr)
        return 1
    for wheel in wheels:
        print(wheel.name)
    core = REPO / DEFAULT_PROJECTS[0]
    print(
        f"\n{len(wheels)} wheels in {args.out}; now:\n"
        f"  docker build --build-arg GRAFLOW_VERSION={project_version(core)} "
        f"--build-arg BASE_IMAGE=<image with python {args.python_version}> -t graflow-worker:dev {HERE}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
