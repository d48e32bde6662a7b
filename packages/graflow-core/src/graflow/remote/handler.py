"""RemoteTaskHandler: the host side of every handler that runs tasks in another Python process.

A subclass only starts processes (:meth:`RemoteTaskHandler.start_process`: a local child, a
container, an SSH exec channel); this class does the rest, the same way for all of them:

1. fills the task's parameters on the host (results and channel values, as in-process);
2. handshakes with the runner: its first message reports its Python and cloudpickle versions, and
   a runner that could not load what this host pickles is refused before anything runs;
3. sends the call and serves the runner's requests while the task runs: channel operations
   (``lock`` included), ``get_result``, ``next_task``, ``next_iteration``, ``terminate_workflow``,
   ``cancel_workflow`` and ``checkpoint`` are carried out on the host, so they take effect exactly
   as they would in-process;
4. returns the result, or raises the task's exception as its own type with the remote traceback
   as ``__cause__``;
5. enforces ``timeout`` (the runner is killed), kills the runner on Ctrl-C, and closes it afterwards,
   or keeps it for the next task with ``reuse=True``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import logging
import sys
import threading
import time
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from graflow.core.handler import TaskHandler
from graflow.exceptions import ConfigError, GraflowWorkflowCanceledError, TaskError, TaskTimeoutError
from graflow.pickling import by_value_modules, pickled_by_value
from graflow.remote import protocol
from graflow.remote.bundle import RunnerBundle, runner_bundle
from graflow.remote.process import RemoteProcess

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext, TaskExecutionContext
    from graflow.core.task import Executable

logger = logging.getLogger("graflow.remote")

_CHANNEL_METHODS = frozenset(
    {
        "set",
        "get",
        "delete",
        "exists",
        "keys",
        "clear",
        "append",
        "prepend",
        "atomic_add",
        "snapshot",
        "restore",
        "get_many",
        "set_many",
    }
)
_CONTEXT_METHODS = frozenset({"get_result", "next_iteration", "terminate_workflow", "cancel_workflow", "checkpoint"})


def _nothing() -> None:
    return None


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a runner (attached as ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.traceback = text

    def __str__(self) -> str:
        return "\n\nRemote traceback:\n" + self.traceback.rstrip()


class RemoteTaskError(TaskError):
    """A task raised an exception in a runner that could not be sent back as itself."""

    def __init__(self, task_id: str, remote_type: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"Task '{task_id}' raised {remote_type}: {message}", task_id)
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback


class RemoteRunnerError(TaskError):
    """The runner ended, or broke the protocol, before answering."""


class RemoteVersionMismatchError(ConfigError):
    """The runner's Python or cloudpickle cannot load what this host pickles."""


class _Runner:
    """A started runner that has said hello."""

    def __init__(self, process: RemoteProcess, output: collections.deque[str]) -> None:
        self.process = process
        self.stream = protocol.FrameStream(process.read, process.write)
        self.output = output
        self.task_id: str | None = None
        self.killed_for_timeout = False
        self.killed_for_cancel = False
        self.hello: dict[str, Any] = {}
        self.tasks_run = 0
        self.seq = 0
        self.fenced = 0  # the last task whose output has all been passed on
        self.fence_seen = threading.Condition()
        self.serving = 0  # the seq of the task being served (0: none); only that task may be killed
        self._kill_lock = threading.Lock()

    def saw_fence(self, seq: int) -> None:
        with self.fence_seen:
            self.fenced = max(self.fenced, seq)
            self.fence_seen.notify_all()

    def wait_for_output(self, seq: int, timeout: float = 2.0) -> None:
        """Wait (briefly) until the task's output has been logged, so it comes before its result."""
        with self.fence_seen:
            self.fence_seen.wait_for(lambda: self.fenced >= seq, timeout)

    def kill_for_timeout(self, seq: int) -> None:
        self._kill_serving(seq, "timeout")

    def kill_for_cancel(self, seq: int) -> None:
        self._kill_serving(seq, "cancel")

    def _kill_serving(self, seq: int, why: str) -> None:
        # A timer or a cancellation listener may fire late, after task ``seq`` finished and the runner
        # went back to the pool or serves another task (another run's): only kill it while it runs ``seq``.
        with self._kill_lock:
            if self.serving != seq:
                return
            if why == "timeout":
                self.killed_for_timeout = True
            else:
                self.killed_for_cancel = True
            self.process.kill()

    def done_serving(self) -> None:
        """The task ended: late kills for it are ignored from now on (waits for one under way)."""
        with self._kill_lock:
            self.serving = 0

    def discard(self) -> None:
        try:
            self.process.kill()
        finally:
            self.process.close()

    def finish(self) -> None:
        """Ask the runner to exit, then release it."""
        try:
            self.stream.send(protocol.EXIT)
        except OSError:
            pass
        self.process.close()

    def output_tail(self) -> str:
        lines = [line.rstrip() for line in self.output if line.strip()]
        if not lines:
            return " It wrote nothing to stderr."
        return " Its last output:\n  " + "\n  ".join(lines[-15:])


class RemoteTaskHandler(TaskHandler):
    """Base class of handlers that run tasks in a runner process (see the module docstring).

    Subclasses implement :meth:`start_process` (and :meth:`describe_target` for messages).

    Settings shared by every remote handler:

    - ``reuse``: keep runners alive between tasks (up to ``pool_size`` idle ones) instead of
      starting one per task; a dead or unresponsive runner is replaced.
    - ``python``: the interpreter to start on the remote side.
    - ``pickle_by_value``: extra modules whose functions and classes are shipped by value (the
      task function's own module is, when it is not an installed package).
    """

    def __init__(
        self,
        *,
        reuse: bool = False,
        pool_size: int = 4,
        python: str = "python3",
        pickle_by_value: Sequence[str] = (),
        startup_timeout: float = 120.0,
    ) -> None:
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ConfigError(f"pool_size must be a whole number >= 1, got {pool_size!r}")
        if not isinstance(python, str) or not python:
            raise ConfigError(f"python must be the name or path of an interpreter, got {python!r}")
        if isinstance(pickle_by_value, str):
            pickle_by_value = [pickle_by_value]
        self.reuse = bool(reuse)
        self.pool_size = pool_size
        self.python = python
        self.pickle_by_value = tuple(pickle_by_value)
        self.startup_timeout = startup_timeout
        self._idle: list[_Runner] = []
        self._busy: set[_Runner] = set()
        self._lock = threading.Lock()
        self._lock_tokens = itertools.count(1)
        self._closed = False

    # -- what subclasses provide -------------------------------------------------------------------
    @abstractmethod
    def start_process(self, bundle: RunnerBundle, on_output: Callable[[str], None]) -> RemoteProcess:
        """Deliver ``bundle`` (unless already there) and start ``bundle.command(self.python, path)``."""

    def describe_target(self) -> str:
        """Where this handler runs tasks, for messages ("container from image 'x'", "ssh u@h:22")."""
        return f"the {self.get_name()} handler's runner"

    # -- running a task ---------------------------------------------------------------------------
    def execute_task(self, task: Executable, context: ExecutionContext) -> Any:
        call_arguments = getattr(task, "call_arguments", None)
        if call_arguments is None:
            raise ConfigError(
                f"The '{self.get_name()}' handler runs function tasks (@task); '{task.task_id}' is a "
                f"{type(task).__name__}"
            )
        tctx = context.current_task_context or context.create_task_context(task.task_id)
        args, kwargs = call_arguments(context, tctx, tctx.input_data)
        inject = bool(task.inject_context)
        spec = {
            "func": task.func,
            "args": args[1:] if inject else args,
            "kwargs": dict(kwargs),
            "inject_context": inject,
            "info": {
                "task_id": task.task_id,
                "session_id": context.session_id,
                "cycle_count": tctx.cycle_count,
                "max_cycles": tctx.max_cycles,
                "retry_count": tctx.retry_count,
                "max_retries": tctx.max_retries,
                "channel_name": getattr(context.channel, "name", "channel"),
            },
        }
        body = self._pickle_call(task, spec)
        runner = self._acquire()
        runner.task_id = task.task_id
        runner.seq += 1
        seq = runner.serving = runner.seq
        timer = None
        timeout = getattr(task, "timeout", None)
        if timeout:
            timer = threading.Timer(timeout, runner.kill_for_timeout, (seq,))
            timer.daemon = True
        started = time.perf_counter()
        healthy = False
        locks: dict[int, Any] = {}
        stop_listening: Callable[[], None] = _nothing
        try:
            # another task (a sibling group member) canceling the workflow stops this runner at once
            stop_listening = context.on_cancel(functools.partial(runner.kill_for_cancel, seq))
            if timer is not None:
                timer.start()
            runner.stream.send(protocol.TASK, protocol.TASK_SEQ.pack(runner.seq) + body)
            result, healthy = self._serve(runner, task, context, tctx, locks, started, timeout)
            return result
        except (OSError, protocol.ProtocolError) as exc:
            raise self._runner_failure(runner, task, context, timeout, started, exc) from exc
        finally:
            runner.done_serving()
            stop_listening()
            if timer is not None:
                timer.cancel()
            for cm in locks.values():
                with contextlib.suppress(Exception):
                    cm.__exit__(None, None, None)
            # runner.task_id stays set: output still in flight is labelled with this task until the next one
            runner.tasks_run += 1
            self._release(runner, healthy and not (runner.killed_for_timeout or runner.killed_for_cancel))

    def _serve(
        self,
        runner: _Runner,
        task: Executable,
        context: ExecutionContext,
        tctx: TaskExecutionContext,
        locks: dict[int, Any],
        started: float,
        timeout: float | None,
    ) -> tuple[Any, bool]:
        import cloudpickle
        stream = runner.stream
        while True:
            frame = stream.recv()
            if frame is None:
                raise self._runner_failure(runner, task, context, timeout, started, None)
            kind, body = frame
            if kind == protocol.CALL:
                stream.send(protocol.REPLY, self._answer(body, runner.seq, context, tctx, locks))
            elif kind == protocol.DONE:
                runner.wait_for_output(runner.seq)
                try:
                    return cloudpickle.loads(body), True
                except Exception as exc:
                    raise TaskError(
                        f"Task '{task.task_id}' returned a value this host cannot unpickle: {exc}", task.task_id
                    ) from exc
            elif kind == protocol.ERROR:
                runner.wait_for_output(runner.seq)
                raise self._task_exception(task.task_id, body)
            else:
                raise protocol.ProtocolError(f"unexpected frame {kind!r} from the runner")

    def _answer(
        self, body: bytes, seq: int, context: ExecutionContext, tctx: TaskExecutionContext, locks: dict
    ) -> bytes:
        import cloudpickle

        try:
            call_seq, target, method, args, kwargs = cloudpickle.loads(body)
            if call_seq != seq:
                raise RuntimeError(
                    "a thread left running by an earlier task called its context after that task had finished; "
                    "join your threads before the task returns"
                )
            if target == "channel" and method in _CHANNEL_METHODS:
                value = getattr(context.channel, method)(*args, **kwargs)
            elif target == "lock" and method == "try_acquire":
                # never wait here: the runner retries, and this loop keeps serving (the holder's release)
                cm = context.channel.lock(args[0], timeout=0)
                try:
                    cm.__enter__()
                except TimeoutError:
                    value = None
                else:
                    value = next(self._lock_tokens)
                    locks[value] = cm
            elif target == "lock" and method == "release":
                cm = locks.pop(args[0])
                cm.__exit__(None, None, None)
                value = None
            elif target == "context" and method == "next_task":
                value = self._spawn(tctx, *args)
            elif target == "context" and method in _CONTEXT_METHODS:
                value = getattr(tctx, method)(*args, **kwargs)
            else:
                raise AttributeError(f"the host does not serve {target}.{method}()")
            reply: tuple[bool, Any] = (True, value)
        except Exception as exc:  # noqa: BLE001 - the runner gets the exception and raises it in the task
            reply = (False, exc)
        try:
            return cloudpickle.dumps(reply)
        except Exception as exc:  # noqa: BLE001 - an unpicklable value or error becomes a clear TypeError
            what = "value" if reply[0] else f"{type(reply[1]).__name__} error"
            return cloudpickle.dumps((False, TypeError(f"The host's {what} cannot be sent to the runner: {exc}")))

    @staticmethod
    def _spawn(
        tctx: TaskExecutionContext, nodes: list[Any], edges: list[tuple[str, str]], entry: str, goto: bool
    ) -> str:
        graph = tctx.execution_context.graph
        by_id: dict[str, Any] = {}
        for node in nodes:
            tid = node.task_id
            by_id[tid] = graph.get_node(tid) if graph.has_node(tid) else node
        for src, dst in edges:
            source = by_id[src]
            if not graph.has_node(src) and by_id[dst] not in source._pending_edges:
                source._pending_edges.append(by_id[dst])
        return tctx.next_task(by_id[entry], goto=goto)

    def _task_exception(self, task_id: str, body: bytes) -> BaseException:
        import cloudpickle
        details = cloudpickle.loads(body)
        exc: BaseException | None = None
        if details.get("exception") is not None:
            try:
                exc = cloudpickle.loads(details["exception"])
            except Exception:  # noqa: BLE001 - fall back to the text when the type cannot be rebuilt here
                exc = None
        if not isinstance(exc, BaseException):
            exc = RemoteTaskError(task_id, details["type"], details["message"], details["traceback"])
        exc.__cause__ = RemoteTraceback(details["traceback"])
        return exc

    def _runner_failure(
        self,
        runner: _Runner,
        task: Executable,
        context: ExecutionContext,
        timeout: float | None,
        started: float,
        cause: BaseException | None,
    ) -> Exception:
        elapsed = time.perf_counter() - started
        if runner.killed_for_timeout and timeout:
            return TaskTimeoutError(task.task_id, timeout, elapsed)
        if runner.killed_for_cancel and context.canceled is not None:
            message, by = context.canceled
            return GraflowWorkflowCanceledError(
                f"{message} (task '{task.task_id}' on {self.describe_target()} was stopped)", by
            )
        code = runner.process.wait(timeout=5)
        why = f" ({cause})" if cause is not None else ""
        return RemoteRunnerError(
            f"The runner of task '{task.task_id}' on {self.describe_target()} {runner.process.exit_reason(code)} "
            f"before the task finished{why}.{runner.output_tail()}",
            task.task_id,
        )

    def _pickle_call(self, task: Executable, spec: dict[str, Any]) -> bytes:
        import cloudpickle

        try:
            with pickled_by_value(by_value_modules(spec["func"], self.pickle_by_value)):
                return cloudpickle.dumps(spec)
        except ImportError as exc:
            raise ConfigError(
                f"Task '{task.task_id}': pickle_by_value names module {exc.name!r}, which cannot be imported here"
            ) from exc
        except Exception as exc:
            raise TaskError(
                f"Task '{task.task_id}' cannot be sent to {self.describe_target()}: its function or arguments "
                f"cannot be pickled ({type(exc).__name__}: {exc}). Pass plain data between tasks.",
                task.task_id,
            ) from exc

    # -- runners ------------------------------------------------------------------------------------
    def _acquire(self) -> _Runner:
        while self.reuse:
            with self._lock:
                if not self._idle:
                    break
                runner = self._idle.pop()
            if self._responds(runner):
                with self._lock:
                    self._busy.add(runner)
                return runner
            runner.discard()
        runner = self._start()
        with self._lock:
            self._busy.add(runner)
        return runner

    def _responds(self, runner: _Runner) -> bool:
        if runner.process.wait(0) is not None:
            return False
        timer = threading.Timer(10.0, runner.process.kill)
        timer.daemon = True
        timer.start()
        try:
            runner.stream.send(protocol.PING)
            frame = runner.stream.recv()
            return frame is not None and frame[0] == protocol.PONG
        except (OSError, protocol.ProtocolError):
            return False
        finally:
            timer.cancel()

    def _release(self, runner: _Runner, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(runner)
            keep = healthy and self.reuse and not self._closed and len(self._idle) < self.pool_size
            if keep:
                self._idle.append(runner)
        if keep:
            return
        if healthy:
            runner.finish()
        else:
            runner.discard()

    def _start(self) -> _Runner:
        output: collections.deque[str] = collections.deque(maxlen=50)
        holder: list[_Runner] = []

        def on_output(line: str) -> None:
            at = line.find(protocol.OUTPUT_FENCE)
            if at >= 0:
                # the fence may share a line with output that did not end in a newline
                if holder:
                    with contextlib.suppress(ValueError):
                        holder[0].saw_fence(int(line[at + len(protocol.OUTPUT_FENCE) :].strip()))
                line = line[:at]
                if not line:
                    return
            output.append(line)
            task_id = holder[0].task_id if holder else None
            logger.info("[%s] %s", task_id or self.get_name(), line.rstrip("\n"))

        process = self.start_process(runner_bundle(), on_output)
        runner = _Runner(process, output)
        holder.append(runner)
        timer = threading.Timer(self.startup_timeout, process.kill)
        timer.daemon = True
        timer.start()
        stray = ""
        try:
            frame = runner.stream.recv(max_body=protocol.MAX_HELLO)
        except protocol.UnexpectedBytesError as exc:
            frame, stray = None, f" It wrote {exc.leading!r} before the runner's greeting (a login script printing?)."
        except (OSError, protocol.ProtocolError):
            frame = None
        finally:
            timer.cancel()
        if frame is None or frame[0] != protocol.HELLO:
            if stray:
                process.kill()  # whatever is talking there is not a runner that will exit by itself
            code = process.wait(timeout=5)
            runner.discard()
            raise RemoteRunnerError(
                f"The runner on {self.describe_target()} {process.exit_reason(code)} before it started (is "
                f"'{self.python}' a Python 3 interpreter there?).{stray}{runner.output_tail()}"
            )
        runner.hello = json.loads(frame[1].decode("utf-8"))
        problem = version_mismatch(runner.hello)
        if problem:
            runner.discard()
            raise RemoteVersionMismatchError(f"Cannot run tasks on {self.describe_target()}: {problem}")
        return runner

    def close(self) -> None:
        """Stop idle runners now, and busy ones as soon as their task ends.

        The handler still works afterwards (a closed handler starts a runner per task), so a run
        that is still going finishes.
        """
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for runner in idle:
            runner.finish()

    def idle_runners(self) -> int:
        """How many warm runners wait for work (``reuse=True``)."""
        with self._lock:
            return len(self._idle)


def version_mismatch(hello: dict[str, Any]) -> str | None:
    """Why a runner that sent ``hello`` cannot load this host's payloads, or None if it can."""
    import cloudpickle
    here = tuple(sys.version_info[:2])
    there = tuple(hello.get("python", (0, 0))[:2])
    here_text = ".".join(map(str, sys.version_info[:3]))
    there_text = ".".join(map(str, hello.get("python", ["?"])))
    if there != here:
        return (
            f"its Python is {there_text} and this host's is {here_text}. Tasks travel as cloudpickle payloads, "
            f"which need the same Python minor version ({here[0]}.{here[1]}) on both sides: use an interpreter or "
            f"image with Python {here[0]}.{here[1]} (setting 'python' picks the interpreter)."
        )
    implementation = hello.get("implementation", sys.implementation.name)
    if implementation != sys.implementation.name:
        return f"it runs {implementation} and this host runs {sys.implementation.name}; use the same implementation."
    if hello.get("cloudpickle") != cloudpickle.__version__:
        return (
            f"its cloudpickle is {hello.get('cloudpickle')} and this host's is {cloudpickle.__version__}; both sides "
            f"must use the same cloudpickle version."
        )
    return None
