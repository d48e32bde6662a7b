"""Pure logic of the Docker handler, no daemon: settings, GPU requests, the stream demultiplexer.

The demultiplexer runs over a real socket pair; only the Docker API object is a stand-in (it records
the calls the container process makes).
"""

from __future__ import annotations

import io
import socket
import struct
import tarfile
import threading
from typing import Any

import docker
import pytest

from graflow.coordination.coordinator import check_kwargs
from graflow.core.context import ExecutionContext
from graflow.core.decorators import task
from graflow.core.engine import WorkflowEngine
from graflow.core.task import chain
from graflow.core.workflow import workflow
from graflow.exceptions import ConfigError
from graflow_docker import DockerTaskHandler, gpu_device_requests
from graflow_docker.container import RUNNER_DIR, ContainerProcess, bundle_archive


def _host_config(handler: DockerTaskHandler) -> dict[str, Any]:
    # An API client with a fixed version never connects: create_host_config is pure.
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    return api.create_host_config(**handler.host_config_options())


# -- GPUs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gpus", ["all", "ALL", True, -1])
def test_all_gpus_is_count_minus_one(gpus):
    (request,) = gpu_device_requests(gpus)
    assert request["Count"] == -1
    assert request["Capabilities"] == [["gpu"]]
    assert request["DeviceIDs"] == []


@pytest.mark.parametrize("gpus", [2, "2"])
def test_a_number_of_gpus_is_a_count(gpus):
    (request,) = gpu_device_requests(gpus)
    assert request["Count"] == 2
    assert request["Capabilities"] == [["gpu"]]


@pytest.mark.parametrize("gpus", [["0", "2"], ("0", 2), "0,2", "device=0,2"])
def test_device_ids(gpus):
    (request,) = gpu_device_requests(gpus)
    assert request["DeviceIDs"] == ["0", "2"]
    assert request["Count"] == 0
    assert request["Capabilities"] == [["gpu"]]


def test_uuid_device_ids_pass_through():
    (request,) = gpu_device_requests(["GPU-3a5f0c1e-0000-1111-2222-333344445555"])
    assert request["DeviceIDs"] == ["GPU-3a5f0c1e-0000-1111-2222-333344445555"]


@pytest.mark.parametrize("gpus", [None, 0, False, []])
def test_no_gpus(gpus):
    assert gpu_device_requests(gpus) == []


@pytest.mark.parametrize("gpus", [-2, "gpu please", "device=", [None], ["0", ""], 1.5, {"count": 1}, [-1]])
def test_bad_gpu_requests_say_what_is_accepted(gpus):
    with pytest.raises(ConfigError) as info:
        gpu_device_requests(gpus)
    assert "gpus='all'" in str(info.value)


def test_gpu_setting_reaches_the_host_config():
    config = _host_config(DockerTaskHandler(image="img", gpus="all"))
    assert config["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
    ]
    config = _host_config(DockerTaskHandler(image="img", gpus=["1"]))
    assert config["DeviceRequests"][0]["DeviceIDs"] == ["1"]


# -- settings --------------------------------------------------------------------------------------


def test_limits_map_to_the_host_config():
    config = _host_config(DockerTaskHandler(image="img", mem_limit="64m", cpus=1.5, network="none"))
    assert config["Memory"] == 64 * 1024 * 1024
    assert config["MemorySwap"] == 64 * 1024 * 1024  # no swap beyond the limit
    assert config["NanoCpus"] == 1_500_000_000
    assert config["NetworkMode"] == "none"
    assert config.get("AutoRemove") in (None, False)  # the handler removes containers itself


def test_volumes_in_both_forms():
    config = _host_config(DockerTaskHandler(image="img", volumes={"/srv/data": "/data"}))
    assert config["Binds"] == ["/srv/data:/data:rw"]
    config = _host_config(DockerTaskHandler(image="img", volumes=["/srv/data:/data:ro"]))
    assert config["Binds"] == ["/srv/data:/data:ro"]


def test_container_options_carry_settings_and_ownership_labels():
    handler = DockerTaskHandler(
        image="img", environment={"A": 1}, user="1000:1000", working_dir="/work", labels={"team": "x"}
    )
    options = handler.container_options()
    assert options["stdin_open"] is True and options["tty"] is False and options["detach"] is False
    assert options["environment"] == {"A": "1"}
    assert options["user"] == "1000:1000" and options["working_dir"] == "/work"
    labels = options["labels"]
    assert labels["team"] == "x"
    assert labels["graflow.managed"] == "true"
    assert labels["graflow.handler-id"] == handler.handler_id
    assert labels["graflow.owner-pid"].isdigit()
    assert labels["graflow.auto-remove"] == "true"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"image": ""}, "image must be"),
        ({"image": "img", "environment": "A=1"}, "environment must be"),
        ({"image": "img", "environment": ["A"]}, "'NAME=value'"),
        ({"image": "img", "volumes": ["/no-colon"]}, "source:/container/path"),
        ({"image": "img", "volumes": {"/a": 3}}, "container path"),
        ({"image": "img", "mem_limit": "lots"}, "not a memory size"),
        ({"image": "img", "mem_limit": 0}, "positive size"),
        ({"image": "img", "cpus": 0}, "positive number of CPUs"),
        ({"image": "img", "working_dir": "relative/dir"}, "absolute path"),
        ({"image": "img", "user": ""}, "user must be"),
        ({"image": "img", "labels": {"a": 1}}, "labels must be"),
        ({"image": "img", "pool_size": 0}, "pool_size"),
        ({"image": "img", "docker_host": "tcp://a:1", "base_url": "tcp://b:2"}, "disagree"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        DockerTaskHandler(**kwargs)
    assert fragment in str(info.value)


def test_base_url_is_an_alias_of_docker_host():
    assert DockerTaskHandler(image="img", base_url="tcp://h:2375").docker_host == "tcp://h:2375"
    assert "tcp://h:2375" in DockerTaskHandler(image="img", docker_host="tcp://h:2375").describe_target()
    assert DockerTaskHandler(image="my/img:1").describe_target() == "a container from image 'my/img:1'"


def test_unknown_setting_names_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        check_kwargs(DockerTaskHandler, {"image": "img", "memory": "1g"}, "'docker' task handler", "handler_kwargs")
    text = str(info.value)
    assert "'memory'" in text
    settings = ("image", "environment", "volumes", "gpus", "mem_limit", "cpus", "network", "user", "working_dir")
    for key in (*settings, "reuse"):
        assert key in text


def test_unknown_setting_through_the_engine_and_the_plugin():
    """By name, as a user writes it: the installed plugin provides 'docker' and the engine checks the keys."""
    with workflow("typo") as wf:

        @task(handler="docker", handler_kwargs={"image": "img", "mem": "1g"})
        def typo() -> None:
            return None

        chain(typo)
    with pytest.raises(ConfigError) as info:
        WorkflowEngine().execute(ExecutionContext.create(wf.graph, None))
    assert "'mem'" in str(info.value) and "mem_limit" in str(info.value)


def test_core_import_path_resolves_to_this_class():
    from graflow import plugins
    from graflow.core.handlers.docker import DockerTaskHandler as FromCore

    assert FromCore is DockerTaskHandler
    assert plugins.get_task_handler_class("docker") is DockerTaskHandler


# -- the runner archive ------------------------------------------------------------------------------


def test_bundle_archive_holds_the_runner_readable_by_any_user():
    archive = bundle_archive("graflow-runner-abc.pyz", b"zipdata", "digest-for-this-test")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert set(members) == {RUNNER_DIR.lstrip("/"), f"{RUNNER_DIR.lstrip('/')}/graflow-runner-abc.pyz"}
        folder = members[RUNNER_DIR.lstrip("/")]
        runner = members[f"{RUNNER_DIR.lstrip('/')}/graflow-runner-abc.pyz"]
        assert folder.isdir() and folder.mode == 0o755
        assert runner.isfile() and runner.mode == 0o644
        assert tar.extractfile(runner).read() == b"zipdata"
    assert bundle_archive("graflow-runner-abc.pyz", b"zipdata", "digest-for-this-test") is archive


# -- the multiplexed stream ------------------------------------------------------------------------


class RecordingApi:
    """Stands in for ``docker.APIClient``: records calls, reports a given container state."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, str]] = []
        self.state = state or {"Status": "running", "Running": True, "ExitCode": 0, "OOMKilled": False}
        self.on_kill: Any = None

    def kill(self, container_id: str) -> None:
        self.calls.append(("kill", container_id))
        if self.on_kill:
            self.on_kill()

    def remove_container(self, container_id: str, force: bool = False) -> None:
        self.calls.append(("remove", container_id))

    def inspect_container(self, container_id: str) -> dict[str, Any]:
        return {"State": dict(self.state)}


def _frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(payload)) + payload


def _process(api: RecordingApi, lines: list[str], **kwargs: Any) -> tuple[ContainerProcess, socket.socket]:
    ours, theirs = socket.socketpair()
    return ContainerProcess(api, "c0ffee" * 8, ours, lines.append, image="img", **kwargs), theirs


def test_frames_are_split_into_protocol_bytes_and_output_lines():
    api = RecordingApi()
    lines: list[str] = []
    process, daemon = _process(api, lines)
    stream = (
        _frame(1, b"abc")
        + _frame(2, b"line one\nline t")
        + _frame(2, b"wo\r\n")
        + _frame(1, b"")
        + _frame(1, b"def" * 1000)
        + _frame(2, b"\xff not utf-8 and no newline")
    )
    # byte by byte for the first frames: headers and payloads split across reads
    for index in range(40):
        daemon.sendall(stream[index : index + 1])
    daemon.sendall(stream[40:])
    received = b""
    while len(received) < 3 + 3000:
        received += process.read(4096)
    assert received == b"abc" + b"def" * 1000
    daemon.close()
    assert process.read(10) == b""  # end of stream
    assert lines == ["line one", "line two", "\ufffd not utf-8 and no newline"]
    process.close()
    from graflow_docker.container import wait_for_cleanup

    assert wait_for_cleanup(10)
    assert api.calls == [("remove", process.container_id)]


def test_writes_go_to_the_attached_socket_and_close_half_closes_it():
    api = RecordingApi()
    process, daemon = _process(api, [])
    process.write(b"hello runner")
    assert daemon.recv(100) == b"hello runner"
    process.close()
    assert daemon.recv(100) == b""  # stdin closed
    with pytest.raises(BrokenPipeError):
        process.write(b"more")
    daemon.close()


def test_kill_from_another_thread_unblocks_read():
    api = RecordingApi()
    process, daemon = _process(api, [])
    api.on_kill = daemon.close  # the daemon ends the stream when the container dies
    results: list[bytes] = []
    reader = threading.Thread(target=lambda: results.append(process.read(10)))
    reader.start()
    process.kill()
    process.kill()  # idempotent
    reader.join(5)
    assert results == [b""]
    assert api.calls == [("kill", process.container_id)]
    process.close()


def test_kill_unblocks_read_even_when_the_daemon_never_ends_the_stream():
    api = RecordingApi()
    process, daemon = _process(api, [])
    process.kill()
    assert process.read(10) == b""
    process.close()
    daemon.close()


def test_failing_output_callback_does_not_break_the_stream():
    api = RecordingApi()

    def explode(line: str) -> None:
        raise RuntimeError("log handler broke")

    ours, daemon = socket.socketpair()
    process = ContainerProcess(api, "f" * 64, ours, explode, image="img")
    daemon.sendall(_frame(2, b"a line\n") + _frame(1, b"payload"))
    assert process.read(7) == b"payload"
    process.close()
    daemon.close()


@pytest.mark.parametrize(
    ("state", "code", "mem_limit", "fragments"),
    [
        ({"Status": "exited", "OOMKilled": True, "ExitCode": 137}, 137, "16m", ["mem_limit=16m", "OOM-killed"]),
        ({"Status": "exited", "OOMKilled": False, "ExitCode": 137}, 137, "16m", ["most likely", "mem_limit=16m"]),
        ({"Status": "exited", "OOMKilled": False, "ExitCode": 137}, 137, None, ["SIGKILL", "137"]),
        ({"Status": "exited", "OOMKilled": True, "ExitCode": 137}, 137, None, ["ran out of memory"]),
        ({"Status": "exited", "OOMKilled": False, "ExitCode": 3}, 3, None, ["exited with code 3"]),
        ({"Status": "running", "Running": True}, None, None, ["stopped answering", "still running"]),
    ],
)
def test_exit_reasons(state, code, mem_limit, fragments):
    api = RecordingApi(state)
    process, daemon = _process(api, [], mem_limit=mem_limit)
    if state.get("Status") == "exited":
        assert process.wait(5) == code
    else:
        assert process.wait(0.05) is None
    reason = process.exit_reason(code)
    for fragment in fragments:
        assert fragment in reason
    assert process.short_id in reason
    process.close()
    daemon.close()


# -- ownership labels ----------------------------------------------------------------------------------


def test_owner_of_a_live_process_is_not_gone():
    from graflow_docker.client import _owner_gone, owner_labels

    assert not _owner_gone(owner_labels())


def test_owner_that_exited_is_gone_and_foreign_or_incomplete_labels_are_left_alone():
    import subprocess

    from graflow_docker.client import LABEL_OWNER_PID, LABEL_OWNER_PIDNS, LABEL_OWNER_STARTED, _owner_gone, owner_labels

    child = subprocess.Popen(["sleep", "30"])
    labels = owner_labels()
    labels[LABEL_OWNER_PID] = str(child.pid)
    with open(f"/proc/{child.pid}/stat") as fh:
        labels[LABEL_OWNER_STARTED] = fh.read().rsplit(")", 1)[1].split()[19]
    assert not _owner_gone(labels)  # running
    child.kill()
    child.wait()
    assert _owner_gone(labels)  # ended
    assert not _owner_gone({**labels, LABEL_OWNER_PIDNS: "pid:[1]"})  # another PID namespace: not ours to judge
    assert not _owner_gone({**labels, LABEL_OWNER_STARTED: ""})
    assert not _owner_gone({**labels, LABEL_OWNER_PID: "not-a-pid"})
    # the PID reused by a process started at another time counts as gone
    assert _owner_gone({**owner_labels(), LABEL_OWNER_STARTED: "1"})
