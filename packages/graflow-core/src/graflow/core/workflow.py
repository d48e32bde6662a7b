"""``with workflow("name") as wf:`` — collect a graph, then run it with ``wf.execute()``."""

from __future__ import annotations

import contextvars
from typing import Any

from graflow.core.graph import TaskGraph
from graflow.core.task import Executable
from graflow.exceptions import ConfigError, GraphCompilationError

_current: contextvars.ContextVar[WorkflowContext | None] = contextvars.ContextVar("graflow_workflow", default=None)


def building_workflow() -> WorkflowContext | None:
    """The workflow whose ``with`` block is open in this thread and that is not running right now.

    Tasks created while their workflow runs are deliberately not added to it (they enter the
    running graph only through ``context.next_task``).
    """
    wf = _current.get()
    if wf is None or wf._running:
        return None
    return wf


class WorkflowContext:
    """A workflow under construction: its graph and how to run it."""

    def __init__(self, name: str = "workflow", **config: Any) -> None:
        self.name = name
        self.graph = TaskGraph(name)
        self.config = config
        self._group_counter = 0
        self._running = 0
        self._tokens: list[contextvars.Token[WorkflowContext | None]] = []

    def __enter__(self) -> WorkflowContext:
        self._tokens.append(_current.set(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _current.reset(self._tokens.pop())

    # -- building --------------------------------------------------------------------------------------
    def add_node(self, name: str, task: Executable, skip_if_exists: bool = False) -> None:
        self.graph.add_node(task, name, skip_if_exists=skip_if_exists)
        task._graph = self.graph

    def add_edge(self, from_node: str, to_node: str) -> None:
        self.graph.add_edge(from_node, to_node)

    def rename_node(self, old_task_id: str, new_task_id: str) -> None:
        self.graph.rename_node(old_task_id, new_task_id)

    def get_next_group_name(self) -> str:
        self._group_counter += 1
        return f"ParallelGroup_{self._group_counter}"

    def clear(self) -> None:
        self.graph.clear()
        self._group_counter = 0

    # -- running ---------------------------------------------------------------------------------------
    def execute(
        self,
        start_node: str | Executable | None = None,
        max_steps: int = 10000,
        ret_context: bool = False,
        initial_channel: dict[str, Any] | None = None,
        *,
        start: str | Executable | None = None,
        **inputs: Any,
    ) -> Any:
        """Run the workflow and return the result of the last task that ran.

        ``start`` (or upstream's ``start_node``) picks the first task; by default every source
        node starts. Keyword ``inputs`` and ``initial_channel`` are put into the channel first, so
        tasks receive them as parameters. ``ret_context=True`` returns ``(result, context)``.
        Context settings given to :func:`workflow` (``channel_backend``, ``config``,
        ``default_max_cycles``, ``coordinator`` ...) apply here.
        """
        from graflow.core.context import ExecutionContext
        from graflow.core.engine import WorkflowEngine

        if start is not None and start_node is not None:
            raise ConfigError("Give either start= or start_node=, not both")
        first = start if start is not None else start_node
        if isinstance(first, Executable):
            first = first.task_id
        if len(self.graph) == 0:
            raise GraphCompilationError(
                f"Workflow '{self.name}' is empty: create or wire tasks inside 'with workflow(...) as wf:'"
            )
        context = ExecutionContext.create(self.graph, first, max_steps=max_steps, **self.config)
        channel = context.channel
        for key, value in (initial_channel or {}).items():
            channel.set(key, value)
        for key, value in inputs.items():
            channel.set(key, value)
        self._running += 1
        try:
            result = WorkflowEngine().execute(context)
        finally:
            self._running -= 1
        return (result, context) if ret_context else result

    # -- showing ---------------------------------------------------------------------------------------
    def show_info(self) -> None:
        print(f"Workflow '{self.name}': {len(self.graph)} nodes, {len(self.graph.edges)} edges")
        print(self.graph.to_ascii())

    def visualize_dependencies(self) -> None:
        print(self.graph.to_ascii())

    def __repr__(self) -> str:
        return f"WorkflowContext({self.name!r}, {len(self.graph)} nodes)"


def workflow(name: str = "workflow", **config: Any) -> WorkflowContext:
    """Start collecting a workflow: ``with workflow("etl") as wf: extract >> transform; wf.execute()``."""
    return WorkflowContext(name, **config)


def current_workflow_context() -> WorkflowContext | None:
    return _current.get()


get_current_workflow_context = current_workflow_context

__all__ = ["WorkflowContext", "building_workflow", "current_workflow_context", "workflow"]
