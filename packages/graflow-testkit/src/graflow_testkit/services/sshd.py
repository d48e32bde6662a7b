"""A real OpenSSH ``sshd`` on loopback for integration tests and benchmarks.

:class:`SSHServer` runs ``/usr/sbin/sshd -D`` as a child process of the caller, listening on
127.0.0.1 on a free port, with a host key, a client key and a configuration of its own (nothing
under ``/etc/ssh`` is read or changed). Logins go to a dedicated unprivileged account
(``graflowtest`` by default, created with ``useradd`` when it does not exist), which is closer to
real use than logging in as root. The server installs ``openssh-server`` with apt-get when sshd is
missing (as root)::

    from graflow_testkit.services.sshd import SSHServer

    with SSHServer() as server:
        print(server.host, server.port, server.user)     # 127.0.0.1 40123 graflowtest
        print(server.client_key, server.known_hosts)       # private key file, known_hosts with the right entry
        server.restart()                                     # same port, same host key; sessions are dropped

``SSHServer(password_auth=True)`` also accepts a password login; a random password is set on the
account and kept in ``server.password``.

In a ``conftest.py``, :func:`sshd_server_fixture` makes a pytest fixture (session-scoped by default)
that starts one server for the whole run and stops it by PID at the end, even when tests fail. A
server that cannot start skips the tests that need it, with the reason, except under ``CI=true``,
where it fails them: CI must never go green by skipping the integration tests.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from graflow_testkit.processes import descendants
from graflow_testkit.services.common import (
    ServiceUnavailable,
    free_port,
    in_ci,
    server_fixture,
    start_or_unavailable,
)
from graflow_testkit.services.common import unavailable as _unavailable

SSHD = "/usr/sbin/sshd"
DEFAULT_USER = "graflowtest"
_APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]



def unavailable(reason: str) -> None:
    """Skip the current test with ``reason``, or fail it under ``CI=true``. Never returns."""
    _unavailable(reason, "sshd")


def _run(command: list[str], timeout: float = 120.0, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout, input=input_text)


def find_sshd(install: bool = True) -> str:
    """Path of the sshd binary, installing Debian's ``openssh-server`` when it is missing."""
    if os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen"):
        return SSHD
    if not install:
        raise ServiceUnavailable(f"{SSHD} is not installed; install it with: apt-get install -y openssh-server")
    if shutil.which("apt-get") is None:
        raise ServiceUnavailable(
            f"{SSHD} is not installed and apt-get is not available; install OpenSSH's server (openssh-server)"
        )
    errors: list[str] = []
    install_cmd = [*_APT, "install", "-y", "--no-install-recommends", "openssh-server", "openssh-client"]
    # Try the install first; refresh the package lists only when that fails.
    for commands in ([install_cmd], [[*_APT, "update"], install_cmd]):
        for command in commands:
            result = _run(command, timeout=900)
            if result.returncode != 0:
                errors.append(f"{' '.join(command)} exited {result.returncode}: {result.stderr.strip()[-400:]}")
                break
        if os.access(SSHD, os.X_OK) and shutil.which("ssh-keygen"):
            return SSHD
    raise ServiceUnavailable(
        "sshd is not installed and installing it failed (as root: apt-get install -y openssh-server): "
        + " | ".join(errors)
    )


def ensure_user(name: str = DEFAULT_USER) -> pwd.struct_passwd:
    """Return the account ``name``, creating it (home under /home, shell /bin/sh) when it is missing.

    The account gets the password field ``*`` (no password works, but the account is not
    "locked", which sshd would refuse even for key logins).
    """
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise ServiceUnavailable(
                f"the test user '{name}' does not exist and creating it needs root "
                f"(run: useradd --create-home --shell /bin/sh --password '*' {name})"
            ) from None
        result = _run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", name])
        if result.returncode != 0 and "already exists" not in result.stderr:
            raise ServiceUnavailable(f"useradd {name} failed: {result.stderr.strip()}") from None
        entry = pwd.getpwnam(name)
    if os.geteuid() == 0:
        _unlock(name)
        home = Path(entry.pw_dir)
        if not home.is_dir():
            home.mkdir(parents=True, exist_ok=True)
            os.chown(home, entry.pw_uid, entry.pw_gid)
    return entry


def _unlock(name: str) -> None:
    """Make sure sshd does not consider the account locked (a shadow password starting with ``!``)."""
    try:
        with open("/etc/shadow", encoding="utf-8") as fh:
            for line in fh:
                fields = line.split(":")
                if fields[0] == name and fields[1].startswith("!"):
                    _run(["usermod", "--password", "*", name])
                    return
    except OSError:
        return


def _keygen(path: Path, comment: str) -> str:
    """Generate an ed25519 key pair at ``path`` (no passphrase) and return the public key line."""
    for leftover in (path, path.with_name(path.name + ".pub")):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
    result = _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    if result.returncode != 0:
        raise ServiceUnavailable(f"ssh-keygen failed for {path}: {result.stderr.strip()}")
    return path.with_name(path.name + ".pub").read_text(encoding="utf-8").strip()


def _banner(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something at host:port answers with an SSH identification string."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def user_processes(user: str, pattern: str) -> list[int]:
    """PIDs of live (non-zombie) processes of ``user`` whose command line contains ``pattern``."""
    uid = pwd.getpwnam(user).pw_uid
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if pattern in cmdline:
            found.append(int(entry))
    return found


class SSHServer:
    """One ``sshd -D`` child process on 127.0.0.1; see the module docstring.

    Attributes once started: ``host``, ``port``, ``user``, ``client_key`` (private key file for
    ``user``), ``known_hosts`` (a known_hosts file holding the right entry for ``[host]:port``),
    ``host_public_key`` (``"ssh-ed25519 AAAA..."``), ``password`` (with ``password_auth=True``),
    ``workdir``, ``pid``. The port and host key are kept across :meth:`restart`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        user: str = DEFAULT_USER,
        password_auth: bool = False,
        max_sessions: int = 10,
        startup_timeout: float = 20.0,
        install: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self._port_given = port is not None
        self.port = port if port is not None else free_port(self.host)
        self.user = user
        self.password_auth = password_auth
        self.password: str | None = None
        self.max_sessions = max_sessions
        self.startup_timeout = startup_timeout
        self.install = install
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir: Path | None = None
        self.client_key = Path()
        self.known_hosts = Path()
        self.host_key = Path()
        self.host_public_key = ""
        self.client_public_key = ""
        self.config_path = Path()
        self.log_path = Path()

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def home(self) -> Path:
        """The test user's home folder on this machine (the "remote" side)."""
        return Path(pwd.getpwnam(self.user).pw_dir)

    def known_hosts_line(self) -> str:
        """The known_hosts entry for this server: ``[127.0.0.1]:<port> ssh-ed25519 AAAA...``."""
        key_type, key_data = self.host_public_key.split()[:2]
        return f"[{self.host}]:{self.port} {key_type} {key_data}"

    def ssh_argv(self, *command: str) -> list[str]:
        """An OpenSSH client command line that logs in with the client key and checks the host key."""
        return [
            "ssh",
            "-i", str(self.client_key),
            "-p", str(self.port),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR",
            f"{self.user}@{self.host}",
            *command,
        ]  # fmt: skip

    def processes(self, pattern: str) -> list[int]:
        """PIDs of the test user's live processes whose command line contains ``pattern``."""
        return user_processes(self.user, pattern)

    # -- life cycle --------------------------------------------------------------------------------
    def _prepare(self) -> None:
        if self.workdir is not None:
            return
        if os.geteuid() != 0:
            raise ServiceUnavailable("starting sshd for a dedicated test user needs root (run the tests as root)")
        binary = find_sshd(self.install)
        account = ensure_user(self.user)
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix="graflow-sshd-"))
        # sshd reads AuthorizedKeysFile as the logged-in user: the folder must be traversable.
        workdir.chmod(0o755)
        self.workdir = workdir
        self.host_key = workdir / "ssh_host_ed25519_key"
        self.host_public_key = _keygen(self.host_key, "graflow-test-host")
        self.client_key = workdir / "client_ed25519"
        self.client_public_key = _keygen(self.client_key, "graflow-test-client")
        authorized = workdir / "authorized_keys"
        authorized.write_text(self.client_public_key + "\n", encoding="utf-8")
        authorized.chmod(0o644)
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts.write_text(self.known_hosts_line() + "\n", encoding="utf-8")
        if self.password_auth:
            self.password = secrets.token_urlsafe(18)
            result = _run(["chpasswd"], input_text=f"{self.user}:{self.password}\n")
            if result.returncode != 0:
                raise ServiceUnavailable(f"chpasswd for {self.user} failed: {result.stderr.strip()}")
        self.config_path = workdir / "sshd_config"
        self.log_path = workdir / "sshd.log"
        self._authorized = authorized
        self._account = account.pw_name
        self._write_config()
        check = _run([binary, "-t", "-f", str(self.config_path)])
        if check.returncode != 0:
            raise ServiceUnavailable(f"sshd rejected its test configuration: {check.stderr.strip()}")

    def _write_config(self) -> None:
        assert self.workdir is not None
        workdir = self.workdir
        self.known_hosts.write_text(self.known_hosts_line() + "\n", encoding="utf-8")
        self.config_path.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {self._authorized}",
                    f"PidFile {workdir / 'sshd.pid'}",
                    f"AllowUsers {self._account}",
                    "PermitRootLogin no",
                    "PubkeyAuthentication yes",
                    f"PasswordAuthentication {'yes' if self.password_auth else 'no'}",
                    "KbdInteractiveAuthentication no",
                    "StrictModes no",
                    "UsePAM no",
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    f"MaxSessions {self.max_sessions}",
                    "MaxStartups 64:30:128",
                    "LoginGraceTime 30",
                    "LogLevel VERBOSE",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            ),
            encoding="utf-8",
        )

    def start(self) -> SSHServer:
        """Start sshd and wait until it answers with its banner; raise :class:`ServiceUnavailable` if not.

        When the port was picked here and someone else took it meanwhile, another free port is tried.
        """
        for attempt in range(3):
            try:
                return self._start_once()
            except ServiceUnavailable:
                if self._port_given or attempt == 2 or "Address already in use" not in self.log_tail():
                    raise
                self.port = free_port(self.host)
                self._write_config()
        raise AssertionError("unreachable")

    def _start_once(self) -> SSHServer:
        if self.is_running:
            return self
        self._prepare()
        with open(self.log_path, "ab") as log:
            # A session of its own, so a Ctrl-C aimed at pytest does not kill it mid-test; still our child,
            # stopped by PID in stop().
            self.process = subprocess.Popen(
                [SSHD, "-D", "-f", str(self.config_path), "-E", str(self.log_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if _banner(self.host, self.port):
                return self
            time.sleep(0.02)
        self._terminate()
        raise ServiceUnavailable(
            f"sshd on {self.host}:{self.port} did not answer within {self.startup_timeout:g}s "
            f"(exit code {self.process.returncode}). Its log ends with: {self.log_tail()!r}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sshd *and* every session it serves (their login shells and commands included).

        A plain SIGTERM to sshd leaves open connections running, unlike a host going down; killing
        the whole process tree makes clients see the connection drop, as after a reboot.
        """
        self._terminate(timeout)

    def restart(self, downtime: float = 0.0) -> SSHServer:
        """Stop sshd (dropping every connection), stay down ``downtime`` s, start it again: same port and host key."""
        self.stop()
        if downtime > 0:
            time.sleep(downtime)
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its working folder (keys, config and log)."""
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _terminate(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            sessions = descendants(process.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)
            for pid in sessions:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _banner(self.host, self.port, timeout=0.1):
            time.sleep(0.02)

    def log_tail(self, size: int = 3000) -> str:
        """The end of sshd's log (for error messages)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(self.log_path) - size))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> SSHServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.is_running else "stopped"
        return f"SSHServer({self.user}@{self.host}:{self.port}, {state})"


def start_or_skip(**options: Any) -> SSHServer:
    """Start an :class:`SSHServer`; when that fails, skip the test (fail it under ``CI=true``)."""
    return start_or_unavailable(SSHServer(**options), "sshd")


def sshd_server_fixture(scope: str = "session", **options: Any) -> Callable[..., Iterator[SSHServer]]:
    """A pytest fixture that yields a running :class:`SSHServer` and always stops it afterwards.

    Put ``sshd_server = sshd_server_fixture()`` in a ``conftest.py``; ``options`` go to
    :class:`SSHServer` (``password_auth=True``, ``max_sessions=``).
    """
    return server_fixture(lambda: start_or_skip(**options), scope)


__all__ = [
    "DEFAULT_USER",
    "SSHServer",
    "ServiceUnavailable",
    "ensure_user",
    "find_sshd",
    "free_port",
    "in_ci",
    "sshd_server_fixture",
    "start_or_skip",
    "unavailable",
    "user_processes",
]
