"""The ssh handler against a real sshd on loopback, logging in as a dedicated unprivileged user."""

from __future__ import annotations

import io
import logging
import os
import pwd
import signal
import stat
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from graflow.core.context import TaskExecutionContext
from graflow.core.decorators import task
from graflow.core.retry import RetryPolicy
from graflow.core.task import chain, parallel
from graflow.core.workflow import workflow
from graflow.exceptions import ConfigError, RetryLimitExceededError, TaskError, TaskTimeoutError
from graflow.remote.bundle import RunnerBundle, runner_bundle
from graflow.remote.handler import RemoteRunnerError, RemoteTraceback, RemoteVersionMismatchError
from graflow_ssh import SSHAuthenticationError, SSHConnectionError, SSHTaskHandler
from graflow_ssh.shipping import REMOTE_CACHE_DIR
from graflow_testkit.services.sshd import SSHServer, free_port

pytestmark = pytest.mark.ssh

Run = Callable[..., Any]


class RemoteProblem(Exception):
    """Raised on the remote side; must come back as itself."""


def _alive(pid: int) -> bool:
    """True while ``pid`` is a live (non-zombie) process on this machine (the "remote" host here)."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return False


def _wait_until_gone(pids: list[int], limit: float = 15.0) -> list[int]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        left = [pid for pid in pids if _alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if _alive(pid)]


def _wait_for(predicate: Callable[[], Any], limit: float = 30.0) -> Any:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def _cache_dir(server: SSHServer) -> Path:
    return server.home / REMOTE_CACHE_DIR


# -- results, output, errors ----------------------------------------------------------------------
def test_task_runs_as_the_remote_user_with_env(make_handler: Run, run_workflow: Run, sshd: SSHServer) -> None:
    tricky = 'it\'s $HOME; "quoted" `echo pwned` \\ end'
    handler = make_handler(env={"GRAFLOW_DEMO": tricky, "SECOND": "2"})

    @task(handler="remote")
    def where() -> tuple[int, str | None, str | None, str]:
        import os as remote_os

        environ = remote_os.environ
        return remote_os.getuid(), environ.get("GRAFLOW_DEMO"), environ.get("SECOND"), remote_os.getcwd()

    with workflow("ssh-where") as wf:
        chain(where)
    result, _ = run_workflow(handler, wf)
    account = pwd.getpwnam(sshd.user)
    assert result[0] == account.pw_uid != os.getuid()
    assert result[1] == tricky  # exported literally: no shell expansion, no injection
    assert result[2] == "2"
    assert result[3] == account.pw_dir


def test_output_streams_to_the_host_log_with_the_task_id(
    make_handler: Run, run_workflow: Run, caplog: pytest.LogCaptureFixture
) -> None:
    handler = make_handler()

    @task("talker", handler="remote")
    def talker() -> int:
        import sys

        print("hello from the remote side")
        print("and on stderr", file=sys.stderr)
        return 7

    with workflow("ssh-output") as wf:
        chain(talker)
    with caplog.at_level(logging.INFO, logger="graflow.remote"):
        result, _ = run_workflow(handler, wf)
    assert result == 7
    messages = [r.getMessage() for r in caplog.records if r.name == "graflow.remote"]
    assert "[talker] hello from the remote side" in messages
    assert "[talker] and on stderr" in messages
    assert not any("graflow-ssh-pid" in m for m in messages), messages


def test_exception_keeps_its_type_and_remote_traceback(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler()

    @task(handler="remote")
    def failing_remotely() -> None:
        raise RemoteProblem("disk on fire")

    with workflow("ssh-error") as wf:
        chain(failing_remotely)
    with pytest.raises(TaskError) as info:
        run_workflow(handler, wf)
    cause = info.value.__cause__
    assert type(cause) is RemoteProblem
    assert str(cause) == "disk on fire"
    assert isinstance(cause.__cause__, RemoteTraceback)
    assert "failing_remotely" in cause.__cause__.traceback
    assert "disk on fire" in cause.__cause__.traceback


def test_unpicklable_return_value_is_a_clear_error(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler()

    @task(handler="remote")
    def returns_a_lock() -> Any:
        import threading as remote_threading

        return remote_threading.Lock()

    with workflow("ssh-unpicklable") as wf:
        chain(returns_a_lock)
    with pytest.raises(TaskError) as info:
        run_workflow(handler, wf)
    cause = info.value.__cause__
    assert isinstance(cause, TypeError)
    assert "cannot be pickled" in str(cause)


def test_dynamic_task_from_the_remote_side_runs_on_the_host(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler()

    @task(handler="remote", inject_context=True)
    def planner(ctx: TaskExecutionContext) -> str:
        import os as remote_os

        host_pid_seen = remote_os.getpid()

        @task("follow_up")
        def follow_up() -> tuple[str, int]:
            import os as host_os

            return "ran", host_os.getpid()

        ctx.get_channel().set("planner_pid", host_pid_seen)
        ctx.next_task(follow_up)
        return "planned"

    with workflow("ssh-dynamic") as wf:
        chain(planner)
    _, context = run_workflow(handler, wf)
    assert context.get_result("planner") == "planned"
    assert context.get_result("follow_up") == ("ran", os.getpid())  # the spawned task ran here
    assert context.channel.get("planner_pid") != os.getpid()


# -- stopping remote work ----------------------------------------------------------------------------
def test_timeout_kills_the_remote_process_and_its_children(
    make_handler: Run, run_workflow: Run, sshd: SSHServer
) -> None:
    handler = make_handler()

    @task("sleeper", handler="remote", inject_context=True, timeout=2.0)
    def sleeper(ctx: TaskExecutionContext) -> str:
        import os as remote_os
        import subprocess
        import time as remote_time

        child = subprocess.Popen(["sleep", "300"])
        ctx.get_channel().set("pids", (remote_os.getpid(), child.pid))
        remote_time.sleep(300)
        return "woke up"

    with workflow("ssh-timeout") as wf:
        chain(sleeper)
    contexts: list[Any] = []
    with pytest.raises(TaskError) as info:
        run_workflow(handler, wf, contexts=contexts)
    error = info.value if isinstance(info.value, TaskTimeoutError) else info.value.__cause__
    assert isinstance(error, TaskTimeoutError)
    # the task really ran remotely, as the test user, with a child process of its own ...
    runner_pid, child_pid = contexts[0].channel.get("pids")
    assert runner_pid != child_pid and runner_pid != os.getpid()
    # ... and neither the runner nor its child survived the timeout
    assert _wait_until_gone([runner_pid, child_pid]) == []
    assert runner_pid not in sshd.processes("graflow-runner")
    assert not [p.name for p in _cache_dir(sshd).iterdir() if p.name.endswith(".tmp")]


def test_ctrl_c_kills_the_remote_process(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler()
    contexts: list[Any] = []

    @task("stuck", handler="remote", inject_context=True)
    def stuck(ctx: TaskExecutionContext) -> str:
        import os as remote_os
        import time as remote_time

        ctx.get_channel().set("pids", (remote_os.getpid(), 0))
        remote_time.sleep(300)
        return "never"

    def interrupt_once_started() -> None:
        _wait_for(lambda: contexts and contexts[0].channel.get("pids"))
        os.kill(os.getpid(), signal.SIGINT)

    with workflow("ssh-ctrl-c") as wf:
        chain(stuck)
    # Ctrl-C as at a terminal, even when the test run was started in the background (a non-interactive
    # shell starts background jobs with SIGINT ignored: the signal would then never interrupt the run)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        watcher = threading.Thread(target=interrupt_once_started, daemon=True)
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            run_workflow(handler, wf, contexts=contexts)
        watcher.join(10)
    finally:
        signal.signal(signal.SIGINT, previous)
    runner_pid = contexts[0].channel.get("pids")[0]
    assert _wait_until_gone([runner_pid]) == []


# -- connections ---------------------------------------------------------------------------------------
def _meeting_task(name: str, count: int) -> Any:
    """A task that returns only once ``count`` members are running at the same time (a barrier)."""

    def meet(ctx: TaskExecutionContext) -> int:
        import os as remote_os
        import time as remote_time

        channel = ctx.get_channel()
        channel.atomic_add("arrived", 1)
        deadline = remote_time.monotonic() + 30
        while channel.get("arrived", 0) < count:
            if remote_time.monotonic() > deadline:
                raise TimeoutError(f"only {channel.get('arrived')} of {count} members ran at the same time")
            remote_time.sleep(0.05)
        return remote_os.getpid()

    return task(name, handler="remote", inject_context=True)(meet)


def test_eight_concurrent_tasks_share_one_pooled_connection(
    make_handler: Run, run_workflow: Run, fresh_sshd: Callable[..., SSHServer]
) -> None:
    server = fresh_sshd()
    handler = make_handler(server)
    members = [_meeting_task(f"meet_{i}", 8) for i in range(8)]

    @task
    def gather() -> str:
        return "all met"

    with workflow("ssh-eight") as wf:
        parallel(*members).with_execution("threading", {"thread_count": 8}) >> gather
    result, context = run_workflow(handler, wf)
    assert result == "all met"
    runner_pids = {context.get_result(f"meet_{i}") for i in range(8)}
    assert len(runner_pids) == 8  # eight separate runners ...
    connections = handler.connections()
    assert len(connections) == 1  # ... over one SSH connection (one transport)
    assert connections[0].peak_channels >= 8


def test_a_server_that_limits_sessions_gets_a_second_connection(
    make_handler: Run, run_workflow: Run, fresh_sshd: Callable[..., SSHServer]
) -> None:
    server = fresh_sshd(max_sessions=3)
    handler = make_handler(server)
    members = [_meeting_task(f"limited_{i}", 5) for i in range(5)]

    with workflow("ssh-limited") as wf:
        chain(parallel(*members).with_execution("threading", {"thread_count": 5}))
    _, context = run_workflow(handler, wf)
    assert len({context.get_result(f"limited_{i}") for i in range(5)}) == 5
    # the overflow went to extra connections instead of failing; none carried more than the server allows
    # (how many extra ones depends on how fast the server frees closed sessions, so it is not pinned here)
    connections = handler.connections()
    assert len(connections) >= 2
    assert all(c.peak_channels <= 3 for c in connections)
    assert sum(c.peak_channels for c in connections) >= 5


def test_reconnects_after_the_server_restarts(
    make_handler: Run, run_workflow: Run, fresh_sshd: Callable[..., SSHServer]
) -> None:
    server = fresh_sshd()
    handler = make_handler(server)

    @task(handler="remote")
    def ping() -> str:
        return "pong"

    with workflow("ssh-reconnect") as wf:
        chain(ping)
    assert run_workflow(handler, wf)[0] == "pong"
    (before,) = handler.connections()
    old_pid = server.pid
    server.restart()
    assert server.pid != old_pid
    _wait_for(lambda: not before.alive, limit=10)
    assert run_workflow(handler, wf)[0] == "pong"
    (after,) = handler.connections()
    assert after is not before and after.alive


def test_server_going_down_mid_task_is_a_runner_error(
    make_handler: Run, run_workflow: Run, fresh_sshd: Callable[..., SSHServer]
) -> None:
    server = fresh_sshd()
    handler = make_handler(server)

    @task("doomed", handler="remote", inject_context=True)
    def doomed(ctx: TaskExecutionContext) -> str:
        import os as remote_os
        import time as remote_time

        ctx.get_channel().set("pids", (remote_os.getpid(), 0))
        remote_time.sleep(300)
        return "never"

    contexts: list[Any] = []

    def stop_once_started() -> None:
        _wait_for(lambda: contexts and contexts[0].channel.get("pids"))
        server.stop()

    with workflow("ssh-down") as wf:
        chain(doomed)
    stopper = threading.Thread(target=stop_once_started, daemon=True)
    stopper.start()
    with pytest.raises(RemoteRunnerError) as info:
        run_workflow(handler, wf, contexts=contexts)
    stopper.join(10)
    message = str(info.value)
    assert f"ssh {server.user}@{server.host}:{server.port}" in message
    assert "dropped" in message or "killed" in message or "without an exit status" in message
    assert _wait_until_gone([contexts[0].channel.get("pids")[0]]) == []


def test_runner_killed_on_the_host_is_reported(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler()
    contexts: list[Any] = []

    @task("victim", handler="remote", inject_context=True)
    def victim(ctx: TaskExecutionContext) -> str:
        import os as remote_os
        import time as remote_time

        print("about to be killed")
        ctx.get_channel().set("pids", (remote_os.getpid(), 0))
        remote_time.sleep(300)
        return "never"

    def kill_once_started() -> None:
        pids = _wait_for(lambda: contexts and contexts[0].channel.get("pids"))
        os.kill(pids[0], signal.SIGKILL)  # as the OOM killer or an administrator would

    with workflow("ssh-killed") as wf:
        chain(victim)
    killer = threading.Thread(target=kill_once_started, daemon=True)
    killer.start()
    with pytest.raises(RemoteRunnerError) as info:
        run_workflow(handler, wf, contexts=contexts)
    killer.join(10)
    message = str(info.value)
    assert "victim" in message
    assert "killed by a signal" in message
    assert "about to be killed" in message  # the last output comes with the error


def test_unknown_host_name_is_a_connection_error(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler(host="graflow-no-such-host.invalid", port=22, connect_timeout=5)

    @task(handler="remote")
    def anything() -> int:
        return 1

    with workflow("ssh-no-such-host") as wf:
        chain(anything)
    with pytest.raises(TaskError) as info:
        run_workflow(handler, wf)
    error = info.value.__cause__
    assert isinstance(error, SSHConnectionError)
    assert "graflow-no-such-host.invalid" in str(error) and "does not resolve" in str(error)


def test_connection_refused_is_retried_then_fails_clearly(make_handler: Run, run_workflow: Run) -> None:
    port = free_port()
    handler = make_handler(port=port)

    @task(handler="remote", retry_policy=RetryPolicy(max_retries=2, initial_interval=0.01, retry_on=(ConnectionError,)))
    def unreachable() -> str:
        return "never"

    with workflow("ssh-refused") as wf:
        chain(unreachable)
    with pytest.raises(RetryLimitExceededError) as info:
        run_workflow(handler, wf)
    assert info.value.attempts == 3
    error = info.value.last_error
    assert isinstance(error, SSHConnectionError) and isinstance(error, ConnectionError)
    assert f"127.0.0.1:{port}" in str(error)
    assert "connection refused" in str(error)


def test_connection_refused_then_server_up_succeeds_on_retry(
    settings_for: Run, run_workflow: Run, fresh_sshd: Callable[..., SSHServer]
) -> None:
    server = fresh_sshd()
    server.stop()  # keys and port stay; nothing listens until the first attempt has been refused
    refusals: list[str] = []

    class BringsTheServerUpAfterARefusal(SSHTaskHandler):
        def start_process(self, bundle: RunnerBundle, on_output: Any) -> Any:
            try:
                return super().start_process(bundle, on_output)
            except SSHConnectionError as exc:
                refusals.append(str(exc))
                server.start()
                raise

    handler = BringsTheServerUpAfterARefusal(**settings_for(server))
    try:

        @task(handler="remote", retry_policy=RetryPolicy(max_retries=3, initial_interval=0.01))
        def eventually() -> str:
            return "made it"

        with workflow("ssh-eventually") as wf:
            chain(eventually)
        result, context = run_workflow(handler, wf)
        assert result == "made it"
        assert len(refusals) == 1 and f"127.0.0.1:{server.port}" in refusals[0]
        assert "eventually" in context.completed_tasks
    finally:
        handler.close()


# -- the runner on the remote host ---------------------------------------------------------------------
def _private_bundle() -> RunnerBundle:
    """The real runner with a unique zip comment: same code, a digest (and file name) of its own."""
    buffer = io.BytesIO(runner_bundle().data)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.comment = f"graflow-ssh test {time.time_ns()}".encode()
    data = buffer.getvalue()
    import hashlib

    return RunnerBundle(data=data, digest=hashlib.sha256(data).hexdigest())


def test_bundle_is_shipped_once_checked_by_content_and_reshipped_when_damaged(
    settings_for: Run, run_workflow: Run, sshd: SSHServer, caplog: pytest.LogCaptureFixture
) -> None:
    bundle = _private_bundle()

    class PrivateBundle(SSHTaskHandler):
        def start_process(self, _bundle: RunnerBundle, on_output: Any) -> Any:
            return super().start_process(bundle, on_output)

    @task(handler="remote")
    def probe() -> str:
        import sys

        return sys.argv[0]

    with workflow("ssh-ship") as wf:
        chain(probe)
    remote_file = _cache_dir(sshd) / bundle.filename
    assert not remote_file.exists()

    def shipments() -> int:
        return sum("shipped runner" in r.getMessage() and bundle.filename in r.getMessage() for r in caplog.records)

    try:
        with caplog.at_level(logging.INFO, logger="graflow_ssh"):
            first = PrivateBundle(**settings_for(sshd))
            try:
                assert run_workflow(first, wf)[0] == str(remote_file)
                assert run_workflow(first, wf)[0] == str(remote_file)
            finally:
                first.close()
            assert shipments() == 1
            assert remote_file.read_bytes() == bundle.data
            owner = pwd.getpwnam(sshd.user)
            assert remote_file.stat().st_uid == owner.pw_uid
            assert stat.S_IMODE(remote_file.stat().st_mode) == 0o644
            shipped_at = remote_file.stat().st_mtime_ns

            # a new connection finds the file in place (one stat) and does not upload it again
            second = PrivateBundle(**settings_for(sshd))
            try:
                assert run_workflow(second, wf)[0] == str(remote_file)
            finally:
                second.close()
            assert shipments() == 1
            assert remote_file.stat().st_mtime_ns == shipped_at

            # a damaged (truncated) copy is detected and replaced
            remote_file.write_bytes(bundle.data[: len(bundle.data) // 2])
            third = PrivateBundle(**settings_for(sshd))
            try:
                assert run_workflow(third, wf)[0] == str(remote_file)
            finally:
                third.close()
            assert shipments() == 2
            assert remote_file.read_bytes() == bundle.data
            assert any("damaged or partial" in r.getMessage() for r in caplog.records)
        assert not [p.name for p in _cache_dir(sshd).iterdir() if p.name.endswith(".tmp")]
    finally:
        remote_file.unlink(missing_ok=True)


def test_reuse_keeps_a_warm_runner_and_close_stops_it(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler(reuse=True, pool_size=1)

    @task(handler="remote")
    def first() -> int:
        import os as remote_os

        return remote_os.getpid()

    @task(handler="remote")
    def second(first: int) -> tuple[int, int]:
        import os as remote_os

        return first, remote_os.getpid()

    with workflow("ssh-reuse") as wf:
        first >> second
    result, _ = run_workflow(handler, wf)
    assert result[0] == result[1]
    assert handler.idle_runners() == 1
    assert _alive(result[0])
    handler.close()
    assert _wait_until_gone([result[0]]) == []


def test_version_mismatch_is_refused_before_running(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler(env={"GRAFLOW_RUNNER_HELLO_OVERRIDE": '{"python": [3, 7, 9]}'})

    @task(handler="remote", inject_context=True)
    def must_not_run(ctx: TaskExecutionContext) -> str:
        ctx.get_channel().set("ran", True)
        return "ran"

    with workflow("ssh-mismatch") as wf:
        chain(must_not_run)
    contexts: list[Any] = []
    with pytest.raises(RemoteVersionMismatchError) as info:
        run_workflow(handler, wf, contexts=contexts)
    message = str(info.value)
    assert "3.7.9" in message
    assert ".".join(map(str, __import__("sys").version_info[:3])) in message
    assert contexts[0].channel.get("ran") is None


def test_missing_interpreter_says_so(make_handler: Run, run_workflow: Run) -> None:
    handler = make_handler(python="python3-graflow-missing")

    @task(handler="remote")
    def anything() -> int:
        return 1

    with workflow("ssh-no-python") as wf:
        chain(anything)
    with pytest.raises(RemoteRunnerError) as info:
        run_workflow(handler, wf)
    message = str(info.value)
    assert "python3-graflow-missing" in message
    assert "127" in message and "not found" in message


# -- logging in ------------------------------------------------------------------------------------------
def test_wrong_key_is_an_authentication_error(
    make_handler: Run, run_workflow: Run, sshd: SSHServer, tmp_path: Path
) -> None:
    import subprocess

    stranger = tmp_path / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    handler = make_handler(key_filename=str(stranger))

    @task(handler="remote")
    def anything() -> int:
        return 1

    with workflow("ssh-wrong-key") as wf:
        chain(anything)
    with pytest.raises(SSHAuthenticationError) as info:
        run_workflow(handler, wf)
    message = str(info.value)
    assert f"'{sshd.user}'" in message and f"{sshd.host}:{sshd.port}" in message
    assert str(stranger) in message


def test_password_from_env_logs_in_and_is_never_printed(
    make_handler: Run,
    run_workflow: Run,
    sshd: SSHServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    assert sshd.password
    secret = sshd.password
    monkeypatch.setenv("GRAFLOW_SSH_TEST_PASSWORD", secret)
    log_before = sshd.log_tail(10**6)
    handler = make_handler(key_filename=None, password_env="GRAFLOW_SSH_TEST_PASSWORD")

    @task(handler="remote")
    def logged_in() -> int:
        import os as remote_os

        return remote_os.getuid()

    with workflow("ssh-password") as wf:
        chain(logged_in)
    with caplog.at_level(logging.DEBUG):
        result, _ = run_workflow(handler, wf)
    assert result == pwd.getpwnam(sshd.user).pw_uid
    new_log = sshd.log_tail(10**6)[len(log_before) :]
    assert f"Accepted password for {sshd.user}" in new_log  # the password, not a key, let us in

    # a wrong password fails with a message that names the variable, not its value
    monkeypatch.setenv("GRAFLOW_SSH_TEST_PASSWORD", secret + "-wrong")
    wrong = make_handler(key_filename=None, password_env="GRAFLOW_SSH_TEST_PASSWORD")
    with caplog.at_level(logging.DEBUG), pytest.raises(SSHAuthenticationError) as info:
        run_workflow(wrong, wf)
    assert "$GRAFLOW_SSH_TEST_PASSWORD" in str(info.value)

    # an unset variable is a configuration error naming it
    monkeypatch.delenv("GRAFLOW_SSH_TEST_PASSWORD")
    unset = make_handler(key_filename=None, password_env="GRAFLOW_SSH_TEST_PASSWORD")
    with pytest.raises(ConfigError, match="GRAFLOW_SSH_TEST_PASSWORD"):
        run_workflow(unset, wf)

    out, err = capfd.readouterr()
    everything = [caplog.text, out, err, str(info.value), repr(handler), repr(vars(handler)), repr(vars(wrong))]
    assert caplog.text  # something was logged (DEBUG included), and none of it holds the secret
    for text in everything:
        assert secret not in text


def test_agent_authentication(
    make_handler: Run, run_workflow: Run, sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import subprocess

    if shutil.which("ssh-agent") is None or shutil.which("ssh-add") is None:
        pytest.fail("ssh-agent / ssh-add are missing: install openssh-client")
    socket_path = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(socket_path)], stdout=subprocess.DEVNULL)
    try:
        _wait_for(socket_path.exists, limit=10)
        env = {**os.environ, "SSH_AUTH_SOCK": str(socket_path)}
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(socket_path))
        log_before = sshd.log_tail(10**6)
        handler = make_handler(key_filename=None, allow_agent=True)

        @task(handler="remote")
        def via_agent() -> int:
            import os as remote_os

            return remote_os.getuid()

        with workflow("ssh-agent") as wf:
            chain(via_agent)
        assert run_workflow(handler, wf)[0] == pwd.getpwnam(sshd.user).pw_uid
        new_log = sshd.log_tail(10**6)[len(log_before) :]
        assert f"Accepted publickey for {sshd.user}" in new_log
    finally:
        agent.terminate()
        agent.wait(10)


def test_ssh_config_alias_from_the_users_config(
    run_workflow: Run, sshd: SSHServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "known_hosts").write_text(sshd.known_hosts_line() + "\n", encoding="utf-8")
    (home / ".ssh" / "config").write_text(
        "Host graflow-box\n"
        f"    HostName {sshd.host}\n"
        f"    Port {sshd.port}\n"
        f"    User {sshd.user}\n"
        f"    IdentityFile {sshd.client_key}\n"
        "Host *\n"
        "    User somebody-else\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("HOME", str(home))
    handler = SSHTaskHandler(host="graflow-box", allow_agent=False)
    try:
        assert handler.describe_target() == f"ssh graflow-box ({sshd.user}@{sshd.host}:{sshd.port})"
        assert handler.target.key_filenames == (str(sshd.client_key),)

        @task(handler="remote")
        def aliased() -> int:
            import os as remote_os

            return remote_os.getuid()

        with workflow("ssh-alias") as wf:
            chain(aliased)
        assert run_workflow(handler, wf)[0] == pwd.getpwnam(sshd.user).pw_uid
    finally:
        handler.close()


def test_handler_by_name_with_handler_kwargs(
    ssh_plugin: None, settings_for: Run, sshd: SSHServer, run_workflow: Run
) -> None:
    from graflow.core.context import ExecutionContext
    from graflow.core.engine import WorkflowEngine

    settings = settings_for(sshd)

    @task(handler="ssh", handler_kwargs=settings)
    def by_name() -> int:
        import os as remote_os

        return remote_os.getuid()

    with workflow("ssh-by-name") as wf:
        chain(by_name)
    context = ExecutionContext.create(wf.graph, None)
    assert WorkflowEngine().execute(context) == pwd.getpwnam(sshd.user).pw_uid

    @task(handler="ssh", handler_kwargs={**settings, "hots": "typo"})
    def misspelt() -> int:
        return 1

    with workflow("ssh-typo") as wf2:
        chain(misspelt)
    with pytest.raises(ConfigError) as info:
        WorkflowEngine().execute(ExecutionContext.create(wf2.graph, None))
    assert "hots" in str(info.value) and "known_hosts" in str(info.value) and "host" in str(info.value)
