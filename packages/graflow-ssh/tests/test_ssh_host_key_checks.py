"""Host-key verification against a real sshd: refused when unknown or changed, explicit opt-in for unknown."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graflow.core.decorators import task
from graflow.core.task import chain
from graflow.core.workflow import workflow
from graflow.exceptions import ConfigError
from graflow_ssh import SSHConnectionError, SSHHostKeyError
from graflow_testkit.services.sshd import SSHServer

pytestmark = pytest.mark.ssh

Run = Callable[..., Any]


def _fingerprint_by_ssh_keygen(public_key_file: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(public_key_file)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def _workflow() -> Any:
    @task(handler="remote")
    def hello() -> str:
        return "hello"

    with workflow("ssh-host-keys") as wf:
        chain(hello)
    return wf


def _other_host_key(tmp_path: Path) -> str:
    key = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_name("impostor.pub").read_text().split()[:2])


def test_unknown_host_is_refused_with_the_command_that_trusts_it(
    make_handler: Run, run_workflow: Run, sshd: SSHServer, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("", encoding="utf-8")
    handler = make_handler(known_hosts=str(known_hosts))
    with pytest.raises(SSHHostKeyError) as info:
        run_workflow(handler, _workflow())
    message = str(info.value)
    expected_fp = _fingerprint_by_ssh_keygen(sshd.host_key.with_name(sshd.host_key.name + ".pub"))
    assert expected_fp in message
    assert info.value.fingerprint == expected_fp
    command = f"ssh-keyscan -p {sshd.port} 127.0.0.1 >> {known_hosts}"
    assert command in message
    assert "allow_unknown_hosts=True" in message
    assert isinstance(info.value, ConfigError) and not isinstance(info.value, ConnectionError)

    # Following the advice works: the same handler settings now connect.
    subprocess.run(command, shell=True, check=True, capture_output=True)
    trusted = make_handler(known_hosts=str(known_hosts))
    assert run_workflow(trusted, _workflow())[0] == "hello"


def test_missing_known_hosts_file_is_named(make_handler: Run, run_workflow: Run, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "known_hosts"
    handler = make_handler(known_hosts=str(missing))
    with pytest.raises(SSHHostKeyError) as info:
        run_workflow(handler, _workflow())
    assert f"no file exists at {missing}" in str(info.value)


def test_changed_host_key_is_refused_even_with_the_opt_in(
    make_handler: Run, run_workflow: Run, sshd: SSHServer, tmp_path: Path
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[{sshd.host}]:{sshd.port} {_other_host_key(tmp_path)}\n", encoding="utf-8")
    real_fp = _fingerprint_by_ssh_keygen(sshd.host_key.with_name(sshd.host_key.name + ".pub"))
    impostor_fp = _fingerprint_by_ssh_keygen(tmp_path / "impostor.pub")
    for allow in (False, True):
        handler = make_handler(known_hosts=str(known_hosts), allow_unknown_hosts=allow)
        with pytest.raises(SSHHostKeyError) as info:
            run_workflow(handler, _workflow())
        message = str(info.value)
        assert "HOST KEY HAS CHANGED" in message
        assert real_fp in message and impostor_fp in message
        assert f"ssh-keygen -R '[{sshd.host}]:{sshd.port}'" in message


def test_unknown_host_accepted_only_with_the_logged_opt_in(
    make_handler: Run, run_workflow: Run, sshd: SSHServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="graflow_ssh"):
        handler = make_handler(known_hosts=str(known_hosts), allow_unknown_hosts=True)
        assert run_workflow(handler, _workflow())[0] == "hello"
    fp = _fingerprint_by_ssh_keygen(sshd.host_key.with_name(sshd.host_key.name + ".pub"))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("allow_unknown_hosts=True" in w and "WITHOUT verification" in w for w in warnings)
    assert any("UNVERIFIED" in w and fp in w for w in warnings)
    assert known_hosts.read_text(encoding="utf-8") == ""  # nothing written to known_hosts


def test_default_known_hosts_is_the_users(
    run_workflow: Run, settings_for: Run, sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from graflow_ssh import SSHTaskHandler

    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    settings = settings_for(sshd, known_hosts=None)
    refused = SSHTaskHandler(**settings)
    try:
        with pytest.raises(SSHHostKeyError) as info:
            run_workflow(refused, _workflow())
        assert str(home / ".ssh" / "known_hosts") in str(info.value)
    finally:
        refused.close()
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line() + "\n", encoding="utf-8")
    accepted = SSHTaskHandler(**settings)
    try:
        assert run_workflow(accepted, _workflow())[0] == "hello"
    finally:
        accepted.close()


def test_host_key_refusal_is_not_a_connection_error() -> None:
    # Retrying cannot fix an untrusted key: it must not look like a transient connection failure.
    assert not issubclass(SSHHostKeyError, ConnectionError)
    assert issubclass(SSHConnectionError, ConnectionError)
