"""A real S3-compatible HTTP server for tests: ``moto_server`` on loopback, plus a fault-injecting proxy.

``moto_server`` (from ``moto[server]``, installed with pip into the running interpreter when it is
missing) speaks the S3 REST API over real HTTP, so boto3 runs its real code paths: signing,
retries, multipart uploads, paginated listings. Typical use in a ``conftest.py``::

    from graflow_testkit.services.s3 import s3_server  # noqa: F401  (session-scoped fixture)

    def test_something(s3_server):
        client = s3_server.client()
        client.create_bucket(Bucket="my-bucket")

:class:`S3FaultProxy` sits between a client and the server and answers chosen requests itself:
throttling (HTTP 503 ``SlowDown``), errors, or a connection that hangs, which is how tests reach
the unhappy paths (retries with backoff, interrupted multipart uploads) for real.

Under ``CI=true`` a server that cannot start fails the test; elsewhere the test is skipped with the
reason. Servers are stopped by PID at the end of the session, and at interpreter exit as a last
resort.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from graflow_testkit.services.common import ServiceUnavailable, free_port, unavailable

DEFAULT_REGION = "us-east-1"
ACCESS_KEY_ID = "graflow-test-key"
SECRET_ACCESS_KEY = "graflow-test-secret"
START_TIMEOUT = 60.0
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _ExitedEarly(ServiceUnavailable):
    """The server process ended during start-up (its output is in the message)."""


def _has_moto_server() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("moto", "flask", "flask_cors", "boto3"))


def ensure_moto_installed() -> None:
    """Install ``moto[server]`` into this interpreter when it (or its server extras) is missing."""
    if _has_moto_server():
        return
    command = [sys.executable, "-m", "pip", "install", "--quiet", "moto[server]>=5.0"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServiceUnavailable(f"could not run {' '.join(command)}: {exc}") from exc
    importlib.invalidate_caches()
    if done.returncode != 0 or not _has_moto_server():
        raise ServiceUnavailable(
            f"moto[server] is not installed and `{' '.join(command)}` failed (exit {done.returncode}): "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )


def _stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


class S3Server:
    """One ``moto_server`` process on ``127.0.0.1:<port>``, owned by this process."""

    region = DEFAULT_REGION
    access_key_id = ACCESS_KEY_ID
    secret_access_key = SECRET_ACCESS_KEY

    def __init__(self, proc: subprocess.Popen[bytes], port: int, workdir: str, log: Any = None) -> None:
        self.proc = proc
        self._log = log
        self.pid = proc.pid
        self.port = port
        self.workdir = workdir
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(workdir, "moto_server.log")

    # -- life cycle -----------------------------------------------------------------------------------
    @classmethod
    def start(cls, timeout: float = START_TIMEOUT, env: dict[str, str] | None = None, tries: int = 3) -> S3Server:
        """Start a server on a free port and wait until it answers HTTP; raise ServiceUnavailable.

        The port is picked free but only taken when the server binds it; if another process took it
        in between, the server exits at once and a new port is tried (``tries`` times in all).
        """
        ensure_moto_installed()
        problem = ""
        for _ in range(max(1, tries)):
            try:
                return cls._start_once(timeout, env)
            except _ExitedEarly as exc:
                problem = str(exc)
                if "in use" not in problem:
                    break
        raise ServiceUnavailable(problem)

    @classmethod
    def _start_once(cls, timeout: float, env: dict[str, str] | None) -> S3Server:
        workdir = tempfile.mkdtemp(prefix="graflow-moto-")
        port = free_port()
        log = open(os.path.join(workdir, "moto_server.log"), "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        server_env = {**os.environ, **(env or {})}
        try:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env, cwd=workdir)
        except OSError as exc:
            log.close()
            shutil.rmtree(workdir, ignore_errors=True)
            raise ServiceUnavailable(f"could not start {' '.join(command)}: {exc}") from exc
        server = cls(proc, port, workdir, log)
        _started.append(server)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                output = server.log_tail()
                server.stop()
                raise _ExitedEarly(f"moto_server exited with status {proc.returncode} at start-up: {output}")
            try:
                with urllib.request.urlopen(server.endpoint_url + "/moto-api/data.json", timeout=2) as response:
                    if response.status == 200:
                        return server
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                output = server.log_tail()
                server.stop()
                raise ServiceUnavailable(
                    f"moto_server did not answer on {server.endpoint_url} within {timeout}s: {output}"
                )
            time.sleep(0.05)

    def log_tail(self, limit: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read()[-limit:].decode(errors="replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server by PID (TERM, then KILL) and remove its scratch folder."""
        _stop_process(self.proc)
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _started.remove(self)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    # -- clients --------------------------------------------------------------------------------------
    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A boto3 client for this server (test credentials, the server's region)."""
        import boto3

        options = {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
            **kwargs,
        }
        return boto3.session.Session().client(service, **options)

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables that point boto3 (in a subprocess, say) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def create_bucket(self, name: str | None = None) -> str:
        """Create a bucket (a fresh unique name by default) and return its name."""
        bucket = name or f"graflow-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def empty_bucket(self, bucket: str, prefix: str = "") -> None:
        """Delete every object (and pending multipart upload) under ``prefix``."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        for upload in client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", ()):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])

    # -- IAM enforcement --------------------------------------------------------------------------------
    def _post(self, path: str, body: bytes) -> dict[str, Any]:
        # text/plain: under a form content type the server would parse the body as a form and lose it.
        request = urllib.request.Request(
            self.endpoint_url + path, data=body, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")

    def iam_user(self, name: str, policy: dict[str, Any] | None = None) -> tuple[str, str]:
        """Create an IAM user with an inline ``policy`` (none: no permissions); return its access key pair."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if policy is not None:
            iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @contextlib.contextmanager
    def iam_enforced(self) -> Iterator[None]:
        """Make the server check signatures and IAM policies (moto's ``reset-auth``) inside the block.

        Outside it, as by default, moto lets every request through. Requests from :meth:`client`
        are refused inside the block (its keys belong to no IAM user).
        """
        self._post("/moto-api/reset-auth", b"0")
        try:
            yield
        finally:
            self._post("/moto-api/reset-auth", b"inf")


_started: list[S3Server] = []


@atexit.register
def _stop_leftovers() -> None:
    for server in list(_started):
        server.stop()


def service_unavailable(reason: str) -> None:
    """Fail (under ``CI=true``) or skip the current test because a server is missing."""
    unavailable(f"S3 test server unavailable: {reason}", "the S3 server")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A ``moto_server`` for the whole test session, stopped by PID at its end."""
    try:
        server = S3Server.start()
    except ServiceUnavailable as exc:
        service_unavailable(str(exc))
        raise AssertionError("unreachable") from exc
    try:
        yield server
    finally:
        server.stop()


# -- fault injection -----------------------------------------------------------------------------------
@dataclass
class ProxiedRequest:
    """What a fault rule sees of one request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_size: int

    @property
    def operation(self) -> str:
        """A rough S3 operation name (enough to aim faults): PutObject, UploadPart, GetObject ..."""
        q = self.query
        if self.method == "PUT":
            if "partNumber" in q and "uploadId" in q:
                return "UploadPart"
            return "PutObject" if self.path.strip("/").count("/") >= 1 else "CreateBucket"
        if self.method == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
            if "delete" in q:
                return "DeleteObjects"
        if self.method == "GET":
            if "list-type" in q or self.path.strip("/").count("/") == 0:
                return "ListObjectsV2"
            return "GetObject"
        if self.method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
        if self.method == "HEAD":
            return "HeadObject"
        return self.method


@dataclass
class Fault:
    """Answer up to ``times`` requests that ``match`` with ``status``/``code`` (or hang, if ``hang``)."""

    match: Callable[[ProxiedRequest], bool]
    status: int = 503
    code: str = "SlowDown"
    message: str = "Please reduce your request rate."
    times: float = float("inf")
    hang: bool = False
    hits: int = 0


@dataclass
class LoggedRequest:
    operation: str
    method: str
    path: str
    status: int
    injected: bool


@dataclass
class _ProxyState:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    log: list[LoggedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: threading.Event = field(default_factory=threading.Event)


class S3FaultProxy:
    """An HTTP proxy on ``127.0.0.1`` in front of an S3 server that injects faults on request.

    Point a client at :attr:`endpoint_url`; requests pass through to ``upstream`` unless a fault
    added with :meth:`throttle`, :meth:`fail` or :meth:`hang` matches them. :attr:`log` records
    every request with the status the client got.
    """

    def __init__(self, upstream: str) -> None:
        self.state = _ProxyState(upstream=upstream.rstrip("/"))
        state = self.state

        class Handler(_ProxyHandler):
            proxy_state = state

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="s3-fault-proxy", daemon=True)
        self.thread.start()

    def add(self, fault: Fault) -> Fault:
        with self.state.lock:
            self.state.faults.append(fault)
        return fault

    def throttle(
        self, times: float = float("inf"), operation: str | None = None, status: int = 503, code: str = "SlowDown"
    ) -> Fault:
        """Answer the next ``times`` requests (of ``operation``, if given) with a throttling error."""
        return self.add(Fault(_matcher(operation), status=status, code=code, times=times))

    def fail(
        self,
        operation: str | None,
        status: int,
        code: str,
        message: str = "injected failure",
        times: float = float("inf"),
        when: Callable[[ProxiedRequest], bool] | None = None,
    ) -> Fault:
        """Answer matching requests with an S3 error document."""
        return self.add(Fault(_matcher(operation, when), status=status, code=code, message=message, times=times))

    def hang(
        self, operation: str | None, when: Callable[[ProxiedRequest], bool] | None = None, times: float = float("inf")
    ) -> Fault:
        """Hold matching requests without answering until :meth:`release` or :meth:`stop`."""
        return self.add(Fault(_matcher(operation, when), hang=True, times=times))

    def clear(self) -> None:
        with self.state.lock:
            self.state.faults.clear()
            self.state.log.clear()

    def release(self) -> None:
        """Let hanging requests go (their connections are closed without an answer)."""
        self.state.released.set()

    @property
    def log(self) -> list[LoggedRequest]:
        with self.state.lock:
            return list(self.state.log)

    def stop(self) -> None:
        self.state.released.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _matcher(
    operation: str | None, when: Callable[[ProxiedRequest], bool] | None = None
) -> Callable[[ProxiedRequest], bool]:
    def match(request: ProxiedRequest) -> bool:
        if operation is not None and request.operation != operation:
            return False
        return when is None or when(request)

    return match


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the point of some tests) breaks its connection: not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy_state: _ProxyState

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        state = self.proxy_state
        body = self._read_body()
        split = urlsplit(self.path)
        request = ProxiedRequest(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k: v for k, v in self.headers.items()},
            body_size=len(body),
        )
        fault = None
        with state.lock:
            for candidate in state.faults:
                if candidate.hits < candidate.times and candidate.match(request):
                    candidate.hits += 1
                    fault = candidate
                    break
        if fault is not None and fault.hang:
            with state.lock:
                state.log.append(LoggedRequest(request.operation, self.command, split.path, 0, True))
            state.released.wait()
            self.close_connection = True
            return
        if fault is not None:
            payload = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                f"<Message>{fault.message}</Message><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
            ).encode()
            # Logged before answering, so a client that got its answer finds the request in the log.
            with state.lock:
                state.log.append(LoggedRequest(request.operation, self.command, split.path, fault.status, True))
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload) if self.command != "HEAD" else 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            return
        upstream = urlsplit(state.upstream)
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers.pop("Content-Length", None)
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            with state.lock:
                state.log.append(LoggedRequest(request.operation, self.command, split.path, response.status, False))
            self.send_response(response.status, response.reason)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "content-length":
                    self.send_header(name, value)
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle


__all__ = [
    "Fault",
    "LoggedRequest",
    "ProxiedRequest",
    "S3FaultProxy",
    "S3Server",
    "ServiceUnavailable",
    "ensure_moto_installed",
    "free_port",
    "s3_server",
    "service_unavailable",
]
