"""Unit tests of the ssh handler's settings: validation, ~/.ssh/config resolution, the remote command line.

No server is needed; connecting happens lazily, on the first task.
"""

from __future__ import annotations

import getpass
import shlex
import subprocess
from pathlib import Path

import paramiko
import pytest

from graflow.core.retry import RetryPolicy
from graflow.exceptions import ConfigError
from graflow.remote.bundle import RunnerBundle
from graflow_ssh import SSHConnectionError, SSHTaskHandler
from graflow_ssh.connection import Credentials
from graflow_ssh.host_keys import fingerprint, known_hosts_name
from graflow_ssh.process import PID_MARKER
from graflow_ssh.target import resolve_target


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty HOME, so the developer's own ~/.ssh/config does not leak into these tests."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    return tmp_path


def _key(path: Path) -> Path:
    path.write_text("not read until connecting\n", encoding="utf-8")
    return path


def test_name_and_description(home: Path) -> None:
    handler = SSHTaskHandler(host="build-01.example.org", user="ci", port=2222)
    assert handler.get_name() == "ssh"
    assert handler.describe_target() == "ssh ci@build-01.example.org:2222"
    assert "ci@build-01.example.org:2222" in repr(handler)


def test_defaults(home: Path) -> None:
    target = SSHTaskHandler(host="box").target
    assert (target.hostname, target.port, target.user) == ("box", 22, getpass.getuser())
    assert target.key_filenames == ()
    assert target.known_hosts[0] == str(home / ".ssh" / "known_hosts")
    assert not target.known_hosts_explicit


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({}, "needs a host"),
        ({"host": ""}, "'host' must name the machine"),
        ({"host": "box", "port": 0}, "'port' must be a TCP port"),
        ({"host": "box", "port": "22"}, "'port' must be a TCP port"),
        ({"host": "box", "port": 70000}, "'port' must be a TCP port"),
        ({"host": "box", "user": ""}, "'user' must be a non-empty"),
        ({"host": "box", "env": {"1BAD": "x"}}, "not a valid environment variable name"),
        ({"host": "box", "env": {"A B": "x"}}, "not a valid environment variable name"),
        ({"host": "box", "env": {"OK": object()}}, "must be a string"),
        ({"host": "box", "env": ["A=1"]}, "must be a mapping"),
        ({"host": "box", "password_env": "hunter2 is my password"}, "NAME of an environment variable"),
        ({"host": "box", "connect_timeout": 0}, "connect_timeout must be more than 0"),
        ({"host": "box", "connect_timeout": -1}, "connect_timeout must be a number"),
        ({"host": "box", "keepalive": "often"}, "keepalive must be a number"),
        ({"host": "box", "pool_size": 0}, "pool_size"),
        ({"host": "box", "key_filename": "/nonexistent/id_ed25519"}, "key_filename /nonexistent/id_ed25519 does not"),
        ({"host": "box", "ssh_config": "/nonexistent/ssh_config"}, "ssh_config file /nonexistent/ssh_config"),
    ],
)
def test_bad_settings_are_config_errors(home: Path, settings: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        SSHTaskHandler(**settings)
    assert fragment in str(info.value)


def test_password_value_never_appears_in_settings_errors(home: Path) -> None:
    secret = "correct horse battery staple"
    with pytest.raises(ConfigError) as info:
        SSHTaskHandler(host="box", password_env=secret)
    assert secret not in str(info.value)


def test_unset_password_variable_names_it(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRAFLOW_TEST_UNSET_PW", raising=False)
    with pytest.raises(ConfigError, match=r"GRAFLOW_TEST_UNSET_PW.*not set"):
        Credentials(password_env="GRAFLOW_TEST_UNSET_PW").password()


def test_ssh_config_alias_fills_in_what_was_not_given(home: Path) -> None:
    key = _key(home / "alias_key")
    known = home / "alias_known_hosts"
    (home / ".ssh" / "config").write_text(
        "Host gpu-box\n"
        "    HostName 10.1.2.3\n"
        "    Port 2200\n"
        "    User trainer\n"
        f"    IdentityFile {key}\n"
        f"    UserKnownHostsFile {known}\n",
        encoding="utf-8",
    )
    target = resolve_target("gpu-box")
    assert (target.alias, target.hostname, target.port, target.user) == ("gpu-box", "10.1.2.3", 2200, "trainer")
    assert target.key_filenames == (str(key),)
    assert target.known_hosts == (str(known),)
    assert target.describe() == "gpu-box (trainer@10.1.2.3:2200)"
    # explicit settings win over the config, as on the ssh command line
    other_key = _key(home / "other_key")
    explicit = resolve_target("gpu-box", port=22, user="root", key_filename=str(other_key), known_hosts="kh")
    assert (explicit.hostname, explicit.port, explicit.user) == ("10.1.2.3", 22, "root")
    assert explicit.key_filenames == (str(other_key),)
    assert explicit.known_hosts == (str(Path("kh").resolve()),) and explicit.known_hosts_explicit


def test_ssh_config_wildcards_and_missing_identity_files(home: Path) -> None:
    (home / ".ssh" / "config").write_text(
        "Host *.lab\n    User labuser\n    Port 2022\n    IdentityFile ~/.ssh/does_not_exist\n", encoding="utf-8"
    )
    target = resolve_target("node7.lab")
    assert (target.hostname, target.port, target.user) == ("node7.lab", 2022, "labuser")
    assert target.key_filenames == ()  # a missing IdentityFile is skipped, as ssh does


def test_explicit_ssh_config_path(tmp_path: Path, home: Path) -> None:
    config = tmp_path / "custom_config"
    config.write_text("Host build\n    HostName 192.0.2.10\n    User builder\n", encoding="utf-8")
    handler = SSHTaskHandler(host="build", ssh_config=str(config))
    assert handler.describe_target() == "ssh build (builder@192.0.2.10:22)"


def test_bad_port_in_ssh_config(home: Path) -> None:
    (home / ".ssh" / "config").write_text("Host weird\n    Port twenty-two\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="twenty-two"):
        resolve_target("weird")


def test_command_line_exports_env_literally_and_reports_the_pid(home: Path) -> None:
    handler = SSHTaskHandler(host="box", python="/opt/py 3.11/bin/python", env={"TOKEN": "a'b $HOME `x`", "N": "1"})
    bundle = RunnerBundle(data=b"zip", digest="ab" * 32)
    line = handler.command_line(bundle, "/home/u/.cache/graflow/runner.pyz")
    words = shlex.split(line)
    assert words[:3] == ["exec", "/bin/sh", "-c"] and len(words) == 4
    script = words[3]
    assert script.startswith(f"echo {PID_MARKER}$$ >&2; ")
    prefix, runner = script.split("exec ", 1)
    # run the exports in a real shell, printing the variable instead of starting the runner
    out = subprocess.run(["/bin/sh", "-c", prefix + 'printf %s "$TOKEN"'], capture_output=True, text=True, check=True)
    assert out.stdout == "a'b $HOME `x`"
    assert out.stderr.startswith(PID_MARKER)
    assert shlex.split(runner) == ["/opt/py 3.11/bin/python", "-u", "/home/u/.cache/graflow/runner.pyz"]


def test_connection_errors_are_retryable() -> None:
    error = SSHConnectionError("Cannot connect to SSH server 127.0.0.1:1: connection refused", "127.0.0.1", 1)
    assert isinstance(error, ConnectionError)
    assert RetryPolicy(max_retries=1, retry_on=(ConnectionError,)).should_retry(error, 0)
    assert not RetryPolicy(max_retries=1, retry_on=(ConnectionError,)).should_retry(ConfigError("x"), 0)


def test_fingerprint_matches_ssh_keygen(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key_file)], check=True)
    expected = subprocess.run(["ssh-keygen", "-l", "-f", str(key_file)], capture_output=True, text=True, check=True)
    key = paramiko.Ed25519Key.from_private_key_file(str(key_file))
    assert fingerprint(key) == expected.stdout.split()[1]
    assert known_hosts_name("h", 22) == "h"
    assert known_hosts_name("h", 2222) == "[h]:2222"


def test_pool_key_separates_credentials(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = resolve_target("box", user="u")
    monkeypatch.setenv("GRAFLOW_TEST_PW", "first")
    first = Credentials(password_env="GRAFLOW_TEST_PW").pool_key(target)
    again = Credentials(password_env="GRAFLOW_TEST_PW").pool_key(target)
    monkeypatch.setenv("GRAFLOW_TEST_PW", "second")
    changed = Credentials(password_env="GRAFLOW_TEST_PW").pool_key(target)
    assert first == again != changed
    assert "first" not in repr(first) and "second" not in repr(changed)
    assert Credentials().pool_key(target) != Credentials(allow_unknown_hosts=True).pool_key(target)


def test_plugin_registers_the_ssh_handler(ssh_plugin: None) -> None:
    from graflow import plugins

    assert plugins.lookup("task_handler", "ssh") is SSHTaskHandler
