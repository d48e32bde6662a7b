"""A Docker engine and a local Python base image for integration tests.

``ensure_dockerd()`` makes sure a Docker daemon answers: it uses the one ``DOCKER_HOST`` (or the
default socket) points at, and otherwise installs ``docker.io`` with apt when ``dockerd`` is missing
and starts ``dockerd`` in the background as root. That daemon is meant to outlive the test session
(images are cached in it), so it is deliberately not stopped afterwards; its PID is recorded in
``/tmp/graflow-testkit-dockerd.pid`` and an ``fcntl`` lock file keeps concurrent test runs from
starting a second one.

``ensure_base_image()`` builds ``graflow-test/python:3.11`` when the daemon does not have it yet: a
minimal Debian bookworm root file system with ``python3`` made by ``debootstrap`` from the Debian
mirror apt already uses, imported with ``docker import``. No registry is contacted, so it works on
machines without Docker Hub access; images ``FROM graflow-test/python:3.11`` then build offline.

``require_docker()`` and ``require_base_image()`` are for tests: they return what the test needs,
or fail the test when ``CI=true`` (a server that cannot start is a failure there) and skip it with
the reason elsewhere.

Everything here shells out to the ``docker`` command-line client, so it works without the Docker
SDK for Python.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from graflow_testkit.services.common import ServiceUnavailable, in_ci, unavailable

BASE_IMAGE = "graflow-test/python:3.11"
DEFAULT_SOCKET = "/var/run/docker.sock"
LOCK_FILE = Path(tempfile.gettempdir()) / "graflow-testkit-docker.lock"
PID_FILE = Path(tempfile.gettempdir()) / "graflow-testkit-dockerd.pid"
LOG_FILE = Path(tempfile.gettempdir()) / "graflow-testkit-dockerd.log"
DEBIAN_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
FALLBACK_SOURCES = Path("/etc/apt/sources.list")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
STARTUP_TIMEOUT = 90.0

_thread_lock = threading.RLock()


class DockerUnavailable(ServiceUnavailable):
    """No Docker engine could be reached or started; the message says why and what to do."""


# --------------------------------------------------------------------------------------------
# small helpers


def _run(argv: list[str], timeout: float = 60.0, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)


def _docker_env(docker_host: str | None) -> dict[str, str]:
    env = dict(os.environ)
    if docker_host:
        env["DOCKER_HOST"] = docker_host
    return env


def _daemon_host() -> str:
    return os.environ.get("DOCKER_HOST") or f"unix://{DEFAULT_SOCKET}"


def docker_info(docker_host: str | None = None, timeout: float = 20.0) -> dict[str, Any] | None:
    """The daemon's ``docker info`` as a dict, or None when no daemon answers (or no CLI exists)."""
    if shutil.which("docker") is None:
        return None
    try:
        proc = _run(["docker", "info", "--format", "{{json .}}"], timeout=timeout, env=_docker_env(docker_host))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        return None
    # A client whose daemon is unreachable may still print JSON with ServerErrors.
    if not isinstance(info, dict) or info.get("ServerErrors") or not info.get("ServerVersion"):
        return None
    return info


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Serialise set-up across threads of this process and across processes on this machine."""
    with _thread_lock:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _apt_install(*packages: str) -> None:
    if shutil.which("apt-get") is None:
        raise DockerUnavailable(
            f"cannot install {' '.join(packages)}: apt-get is not available; install them with "
            "your system's package manager"
        )
    if os.geteuid() != 0:
        raise DockerUnavailable(
            f"cannot install {' '.join(packages)}: installing needs root; run "
            f"`sudo apt-get install -y {' '.join(packages)}` once"
        )
    argv = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "install", "-y", "--no-install-recommends", *packages]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = _run(argv, timeout=900, env=env)
    if proc.returncode != 0:
        # The package lists may be missing or stale on a fresh machine: refresh them once and retry.
        _run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update"], timeout=900, env=env)
        proc = _run(argv, timeout=900, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DockerUnavailable(f"`{' '.join(argv)}` failed (exit {proc.returncode}):\n{tail}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True
    return b"dockerd" in cmdline


def _recorded_pid() -> int | None:
    try:
        pid = int(PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def _log_tail(lines: int = 20) -> str:
    try:
        return "\n".join(LOG_FILE.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_for_daemon(pid: int | None, deadline: float) -> dict[str, Any] | None:
    while time.monotonic() < deadline:
        if Path(DEFAULT_SOCKET).exists():
            info = docker_info(f"unix://{DEFAULT_SOCKET}", timeout=10)
            if info is not None:
                return info
        if pid is not None and not _pid_alive(pid):
            return None
        time.sleep(0.25)
    return None


# --------------------------------------------------------------------------------------------
# the daemon


def ensure_dockerd(timeout: float = STARTUP_TIMEOUT) -> str:
    """Return the address of a Docker daemon that answers, starting one when there is none.

    When ``DOCKER_HOST`` names a daemon that answers, that address is returned. Otherwise the
    local socket ``/var/run/docker.sock`` is used, starting ``dockerd`` (as root, installing
    ``docker.io`` with apt when it is missing) if nothing answers there. The daemon is left
    running for later tests and runs. Raises :class:`DockerUnavailable` with the reason otherwise.
    """
    explicit = os.environ.get("DOCKER_HOST")
    if explicit:
        if docker_info(explicit) is not None:
            return explicit
        if explicit.rstrip("/") != f"unix://{DEFAULT_SOCKET}":
            raise DockerUnavailable(
                f"DOCKER_HOST={explicit} does not answer `docker info`; start the daemon there or "
                "unset DOCKER_HOST to use (and if needed start) a local one"
            )
    host = f"unix://{DEFAULT_SOCKET}"
    if shutil.which("docker") is not None and docker_info(host) is not None:
        return host
    with _machine_lock():
        # Someone may have started it while we waited for the lock.
        if shutil.which("docker") is not None and docker_info(host) is not None:
            return host
        if shutil.which("dockerd") is None or shutil.which("docker") is None:
            _apt_install("docker.io")
        if shutil.which("dockerd") is None:
            raise DockerUnavailable(
                "dockerd is still not on PATH after installing docker.io; install Docker Engine "
                "(https://docs.docker.com/engine/install/) and start it"
            )
        deadline = time.monotonic() + timeout
        pid = _recorded_pid()
        if pid is not None:
            # Started earlier (by another run) and still coming up: give it time.
            if _wait_for_daemon(pid, deadline) is not None:
                return host
            raise DockerUnavailable(
                f"dockerd (PID {pid}, recorded in {PID_FILE}) runs but does not answer on "
                f"{DEFAULT_SOCKET} after {timeout:.0f}s; its log {LOG_FILE} ends with:\n{_log_tail()}"
            )
        if os.geteuid() != 0:
            raise DockerUnavailable(
                "no Docker daemon answers and starting dockerd needs root; start it with "
                "`sudo dockerd &` (or `sudo systemctl start docker`) or set DOCKER_HOST"
            )
        with contextlib.suppress(FileNotFoundError):
            # A stale socket from a dead daemon makes the new one fail to bind.
            os.unlink(DEFAULT_SOCKET)
        log = open(LOG_FILE, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            proc = subprocess.Popen(
                ["dockerd", "--host", f"unix://{DEFAULT_SOCKET}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            log.close()
        PID_FILE.write_text(str(proc.pid))
        info = _wait_for_daemon(proc.pid, deadline)
        if info is None:
            code = proc.poll()
            if code is None:
                # It runs but never became ready: stop the daemon we started, by its PID.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(FileNotFoundError):
                PID_FILE.unlink()
            state = f"exited with code {code}" if code is not None else f"did not answer within {timeout:.0f}s"
            raise DockerUnavailable(f"dockerd {state}; its log {LOG_FILE} ends with:\n{_log_tail()}")
        return host


# --------------------------------------------------------------------------------------------
# the base image


def image_exists(tag: str, docker_host: str | None = None) -> bool:
    """True when the daemon has an image ``tag`` locally."""
    try:
        proc = _run(["docker", "image", "inspect", tag], timeout=30, env=_docker_env(docker_host))
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (first ``URIs:`` of the main archive)."""
    try:
        text = DEBIAN_SOURCES.read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "uris":
            for uri in value.split():
                if "security" not in uri:
                    return uri
    try:
        legacy = FALLBACK_SOURCES.read_text()
    except OSError:
        legacy = ""
    for line in legacy.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
            uri = parts[1] if not parts[1].startswith("[") else parts[2]
            return uri
    return DEFAULT_MIRROR


def ensure_base_image(tag: str = BASE_IMAGE, suite: str = "bookworm") -> str:
    """Return ``tag`` after making sure the daemon has it, building it offline when it is missing.

    ``suite`` is the Debian release to bootstrap: ``bookworm`` has Python 3.11, ``trixie`` 3.13
    (useful for an image whose Python differs from the host's).

    The image is a minimal Debian root file system with ``python3`` (debootstrap from the local
    apt mirror) imported with ``docker import``; nothing is pulled from a registry. The build runs
    once per machine: concurrent callers wait on the same lock and find it built.
    """
    docker_host = ensure_dockerd()
    if image_exists(tag, docker_host):
        return tag
    with _machine_lock():
        if image_exists(tag, docker_host):
            return tag
        if shutil.which("debootstrap") is None:
            _apt_install("debootstrap")
        mirror = debian_mirror()
        root = Path(tempfile.mkdtemp(prefix="graflow-base-image-", dir="/var/tmp"))
        try:
            argv = [
                "debootstrap",
                "--variant=minbase",
                "--include=python3",
                suite,
                str(root),
                mirror,
            ]
            proc = _run(argv, timeout=900)
            if proc.returncode != 0:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
                raise DockerUnavailable(f"building {tag}: `{' '.join(argv)}` failed (exit {proc.returncode}):\n{tail}")
            # Keep the image small: apt caches are not needed at run time.
            for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
                for child in (root / sub).glob("*.deb" if "archives" in sub else "*_*"):
                    with contextlib.suppress(OSError):
                        child.unlink()
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            try:
                imp = subprocess.run(
                    [
                        "docker",
                        "import",
                        "--change",
                        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "--change",
                        "ENV LANG=C.UTF-8",
                        "--change",
                        'CMD ["python3"]',
                        "-",
                        tag,
                    ],
                    stdin=tar.stdout,
                    capture_output=True,
                    text=True,
                    timeout=600,
                    check=False,
                    env=_docker_env(docker_host),
                )
            finally:
                assert tar.stdout is not None
                tar.stdout.close()
                tar.wait()
            if imp.returncode != 0 or tar.returncode != 0:
                raise DockerUnavailable(
                    f"building {tag}: `docker import` failed (exit {imp.returncode}, tar exit "
                    f"{tar.returncode}): {imp.stderr.strip()}"
                )
        finally:
            shutil.rmtree(root, ignore_errors=True)
        if not image_exists(tag, docker_host):
            raise DockerUnavailable(f"building {tag}: `docker import` succeeded but the image is not listed")
        return tag


def build_image(tag: str, dockerfile: str, files: dict[str, bytes | str] | None = None) -> str:
    """Build ``tag`` from a Dockerfile text (plus extra context files) with ``docker build``.

    Meant for small test images ``FROM graflow-test/python:3.11``; it builds offline as long as the
    base is local. Returns ``tag``; raises :class:`DockerUnavailable` with the build log on failure.
    """
    docker_host = ensure_dockerd()
    with tempfile.TemporaryDirectory(prefix="graflow-image-") as ctx:
        Path(ctx, "Dockerfile").write_text(dockerfile)
        for name, content in (files or {}).items():
            path = Path(ctx, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                path.write_text(content)
            else:
                path.write_bytes(content)
            path.chmod(0o755)
        proc = _run(["docker", "build", "-q", "-t", tag, ctx], timeout=600, env=_docker_env(docker_host))
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise DockerUnavailable(f"`docker build -t {tag}` failed (exit {proc.returncode}):\n{tail}")
    return tag


# --------------------------------------------------------------------------------------------
# for tests


def _unavailable(reason: str) -> None:
    unavailable(f"Docker unavailable: {reason}", "Docker")


def require_docker() -> dict[str, Any]:
    """``docker info`` of a running daemon (started if needed), or fail (CI=true) / skip the test."""
    try:
        host = ensure_dockerd()
        info = docker_info(host)
        if info is None:
            raise DockerUnavailable(f"the daemon at {host} stopped answering `docker info`")
    except (DockerUnavailable, OSError, subprocess.SubprocessError) as exc:
        _unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    info = dict(info)
    info["DockerHost"] = host
    return info


def require_base_image(tag: str = BASE_IMAGE, suite: str = "bookworm") -> str:
    """``tag`` after :func:`ensure_base_image`, or fail (CI=true) / skip the test with the reason."""
    require_docker()
    try:
        return ensure_base_image(tag, suite)
    except (DockerUnavailable, OSError, subprocess.SubprocessError) as exc:
        _unavailable(str(exc))
        raise AssertionError("unreachable") from exc


def require_image(tag: str, dockerfile: str, files: dict[str, bytes | str] | None = None) -> str:
    """Build a test image (see :func:`build_image`), or fail (CI=true) / skip the test."""
    require_base_image()
    try:
        return build_image(tag, dockerfile, files)
    except (DockerUnavailable, OSError, subprocess.SubprocessError) as exc:
        _unavailable(str(exc))
        raise AssertionError("unreachable") from exc


__all__ = [
    "BASE_IMAGE",
    "DockerUnavailable",
    "build_image",
    "debian_mirror",
    "docker_info",
    "ensure_base_image",
    "ensure_dockerd",
    "image_exists",
    "in_ci",
    "require_base_image",
    "require_docker",
    "require_image",
]
