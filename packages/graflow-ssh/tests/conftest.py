"""Fixtures for graflow-ssh: a real sshd on loopback with a dedicated login user, and handlers for it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from graflow import plugins
from graflow.core.context import ExecutionContext
from graflow.core.engine import WorkflowEngine
from graflow.exceptions import PluginNotFoundError
from graflow_ssh import SSHTaskHandler
from graflow_testkit.services.sshd import SSHServer, start_or_skip

#: One server for the whole run; it also takes password logins (a random password set on the test user).
sshd_server_options = {"password_auth": True}


@pytest.fixture(scope="session")
def sshd() -> Iterator[SSHServer]:
    server = start_or_skip(**sshd_server_options)
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def fresh_sshd() -> Iterator[Callable[..., SSHServer]]:
    """Start extra servers for one test (restarts, refusals, small MaxSessions); all stopped afterwards."""
    started: list[SSHServer] = []

    def start(**options: Any) -> SSHServer:
        server = start_or_skip(**options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.cleanup()


def handler_settings(server: SSHServer, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "user": server.user,
        "key_filename": str(server.client_key),
        "known_hosts": str(server.known_hosts),
        "allow_agent": False,
    }
    settings.update(overrides)
    return {k: v for k, v in settings.items() if v is not None}


@pytest.fixture
def make_handler(sshd: SSHServer) -> Iterator[Callable[..., SSHTaskHandler]]:
    """``make_handler(server=None, **settings)``: an SSHTaskHandler for ``server`` (default: the session sshd)."""
    made: list[SSHTaskHandler] = []

    def make(server: SSHServer | None = None, **overrides: Any) -> SSHTaskHandler:
        handler = SSHTaskHandler(**handler_settings(server or sshd, **overrides))
        made.append(handler)
        return handler

    yield make
    for handler in made:
        handler.close()


def run(
    handler: SSHTaskHandler,
    wf: Any,
    name: str = "remote",
    contexts: list[ExecutionContext] | None = None,
    **channel: Any,
) -> tuple[Any, ExecutionContext]:
    """Run ``wf`` with ``handler`` registered as ``name``; return (result, context).

    ``contexts``, when given, receives the context before the run starts (so a test can watch its
    channel from another thread, or inspect it after the run raised).
    """
    context = ExecutionContext.create(wf.graph, None, max_steps=1000)
    for key, value in channel.items():
        context.channel.set(key, value)
    if contexts is not None:
        contexts.append(context)
    engine = WorkflowEngine()
    engine.register_handler(name, handler)
    return engine.execute(context), context


@pytest.fixture
def ssh_plugin() -> Iterator[None]:
    """Make sure the 'ssh' handler name resolves (the entry point when installed, else registered here)."""
    try:
        plugins.lookup("task_handler", "ssh")
        yield
        return
    except PluginNotFoundError:
        pass
    import graflow_ssh.plugin

    plugins.register(graflow_ssh.plugin)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            plugins.unregister(graflow_ssh.plugin)


@pytest.fixture
def run_workflow() -> Callable[..., tuple[Any, ExecutionContext]]:
    """``run_workflow(handler, wf, name="remote", contexts=None, **channel_values) -> (result, context)``."""
    return run


@pytest.fixture
def settings_for() -> Callable[..., dict[str, Any]]:
    """``settings_for(server, **overrides)``: handler settings that log in to ``server`` with its client key."""
    return handler_settings
