"""Executables: tasks, chains and parallel groups, and the ``>>`` / ``<<`` / ``|`` operators.

Operators wire the graph of the workflow being built (``with workflow(...)``). A task created
while a workflow is running is *not* added to the running graph; it enters it only through
``context.next_task(task)``, together with the edges wired from it (kept on the object meanwhile).
"""

from __future__ import annotations

import inspect
import itertools
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from graflow.exceptions import ConfigError, GraphCompilationError, TaskError

if TYPE_CHECKING:
    from graflow.core.context import ExecutionContext, TaskExecutionContext
    from graflow.core.graph import TaskGraph
    from graflow.core.handlers.group_policy import GroupExecutionPolicy
    from graflow.core.retry import RetryPolicy

_MISSING: Any = object()
NO_DATA: Any = object()
_group_counter = itertools.count(1)


def _first_graph(*graphs: TaskGraph | None) -> TaskGraph | None:
    """The first graph that is not None (graphs define ``__len__``, so ``or`` would skip empty ones)."""
    return next((g for g in graphs if g is not None), None)


def _current_graph() -> TaskGraph | None:
    from graflow.core.workflow import building_workflow

    wf = building_workflow()
    return wf.graph if wf is not None else None


class Executable:
    """Anything that can be a node of a workflow graph."""

    handler_type: str | None = None
    handler_kwargs: dict[str, Any] | None = None
    inject_context: bool = False
    max_cycles: int | None = None
    max_retries: int | None = None
    retry_policy: RetryPolicy | None = None
    timeout: float | None = None
    queue: str | None = None
    _is_group = False

    def __init__(self) -> None:
        self._graph: TaskGraph | None = None
        self._pending_edges: list[Executable] = []

    @property
    def task_id(self) -> str:
        raise NotImplementedError

    # -- graph wiring ---------------------------------------------------------------------------------
    def _register(self, graph: TaskGraph | None = None) -> TaskGraph | None:
        if graph is None:
            graph = _current_graph()
            if graph is None:
                graph = self._graph
                if graph is None:
                    return None
        if self._graph is not graph or self.task_id not in graph._nodes:
            graph.add_node(self)
            self._graph = graph
        return graph

    def _entries(self) -> list[Executable]:
        """Nodes an incoming edge attaches to."""
        return [self]

    def _exits(self) -> list[Executable]:
        """Nodes an outgoing edge leaves from."""
        return [self]

    def _nodes(self) -> list[Executable]:
        """Every graph node this executable stands for."""
        return [self]

    def _connect(self, other: Executable) -> None:
        graph = _current_graph()
        if graph is None:
            graph = self._graph if self._graph is not None else other._graph
        for part in (self, other):
            if part._graph is not graph:
                for node in part._nodes():
                    node._register(graph)
        for src in self._exits():
            for dst in other._entries():
                if graph is not None:
                    graph.add_edge(src.task_id, dst.task_id)
                elif dst not in src._pending_edges:
                    src._pending_edges.append(dst)

    def __rshift__(self, other: Executable) -> SequentialTask:
        _check_operand(other, ">>")
        self._connect(other)
        return SequentialTask([*_flatten_chain(self), *_flatten_chain(other)], _wired=True)

    def __lshift__(self, other: Executable) -> SequentialTask:
        _check_operand(other, "<<")
        other._connect(self)
        return SequentialTask([*_flatten_chain(other), *_flatten_chain(self)], _wired=True)

    def __or__(self, other: Executable) -> ParallelGroup:
        _check_operand(other, "|")
        return ParallelGroup._combine(self, other)

    # -- running ---------------------------------------------------------------------------------------
    def run_in(
        self, context: ExecutionContext, task_context: TaskExecutionContext | None = None, data: Any = NO_DATA
    ) -> Any:
        """Run this executable in-process within ``context`` and return its result.

        Handlers call this; it fills parameters from results and the channel.
        """
        raise TaskError(f"{type(self).__name__} '{self.task_id}' cannot run by itself", self.task_id)

    def set_execution_context(self, context: ExecutionContext) -> None:
        self._execution_context = context

    def get_execution_context(self) -> ExecutionContext:
        ctx = getattr(self, "_execution_context", None)
        if ctx is None:
            raise GraphCompilationError(f"Task '{self.task_id}' has no execution context")
        return ctx


def _check_operand(other: object, op: str) -> None:
    if not isinstance(other, Executable):
        raise GraphCompilationError(
            f"Cannot combine a task with {type(other).__name__!r} using '{op}': both sides must be tasks "
            f"(functions decorated with @task), chains or parallel groups."
        )


def _flatten_chain(e: Executable) -> list[Executable]:
    return list(e.tasks) if isinstance(e, SequentialTask) else [e]


class SequentialTask(Executable):
    """A chain ``a >> b >> c``; edges are already in the graph, this object just remembers the ends."""

    def __init__(self, tasks: Sequence[Executable], _wired: bool = False) -> None:
        super().__init__()
        if not tasks:
            raise GraphCompilationError("A chain needs at least one task")
        self.tasks = list(tasks)
        if not _wired:
            for a, b in itertools.pairwise(self.tasks):
                a._connect(b)
            for t in self.tasks:
                t._register()

    @property
    def task_id(self) -> str:
        return " >> ".join(t.task_id for t in self.tasks)

    @property
    def leftmost(self) -> Executable:
        return self.tasks[0]

    @property
    def rightmost(self) -> Executable:
        return self.tasks[-1]

    def _register(self, graph: TaskGraph | None = None) -> TaskGraph | None:
        result = None
        for t in self.tasks:
            result = t._register(graph)
        return result

    def _entries(self) -> list[Executable]:
        return self.tasks[0]._entries()

    def _exits(self) -> list[Executable]:
        return self.tasks[-1]._exits()

    def _nodes(self) -> list[Executable]:
        return [n for t in self.tasks for n in t._nodes()]

    @property  # type: ignore[override]
    def _graph(self) -> TaskGraph | None:
        first, last = self.tasks[0], self.tasks[-1]
        return first._graph if first._graph is last._graph else None

    @_graph.setter
    def _graph(self, value: TaskGraph | None) -> None:
        pass

    def __len__(self) -> int:
        return len(self.tasks)

    def __getitem__(self, index: int) -> Executable:
        return self.tasks[index]

    def __iter__(self) -> Iterator[Executable]:
        return iter(self.tasks)

    def __repr__(self) -> str:
        return f"SequentialTask({self.task_id})"


class Task(Executable):
    """A named placeholder node with no code (upstream's ``Task``): useful as a start or join point."""

    def __init__(self, task_id: str, register_to_context: bool = True) -> None:
        super().__init__()
        self._task_id = task_id
        self.result_key = task_id + ".__result__"
        if register_to_context:
            self._register()

    @property
    def task_id(self) -> str:
        return self._task_id

    def run_in(
        self, context: ExecutionContext, task_context: TaskExecutionContext | None = None, data: Any = NO_DATA
    ) -> Any:
        return None

    def __repr__(self) -> str:
        return f"Task({self._task_id!r})"


# Parameter plans are cached per function: building 100,000 tasks around one function inspects it once.
_plan_cache: dict[Any, tuple[tuple[str, str, bool], ...]] = {}
_plan_lock = threading.Lock()


def _param_plan(func: Callable[..., Any], skip: int) -> tuple[tuple[str, str, bool], ...]:
    key = (func, skip)
    plan = _plan_cache.get(key)
    if plan is None:
        try:
            params = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):
            params = []
        entries = []
        for p in params[skip:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                continue
            entries.append((p.name, p.name + ".__result__", p.default is not p.empty))
        plan = tuple(entries)
        with _plan_lock:
            if len(_plan_cache) > 10_000:
                _plan_cache.clear()
            _plan_cache[key] = plan
    return plan


_async_cache: dict[Any, bool] = {}


def _is_coroutine_function(func: Callable[..., Any]) -> bool:
    try:
        return _async_cache[func]
    except (KeyError, TypeError):
        pass
    answer = inspect.iscoroutinefunction(func)
    try:
        if len(_async_cache) > 10_000:
            _async_cache.clear()
        _async_cache[func] = answer
    except TypeError:
        pass
    return answer


class TaskWrapper(Executable):
    """A task around a plain function (what ``@task`` makes).

    Calling the wrapper with ``task_id=`` makes a *bound instance*: a new task with its own id and
    some parameters fixed (``fetch(task_id="fetch_eu", region="eu")``). Calling it any other way
    calls the function directly, so decorated functions stay unit-testable.
    """

    def __init__(
        self,
        task_id: str,
        func: Callable[..., Any],
        inject_context: bool = False,
        register_to_context: bool = True,
        handler_type: str | None = None,
        resolve_keyword_args: bool = True,
        max_cycles: int | None = None,
        max_retries: int | None = None,
        retry_policy: RetryPolicy | None = None,
        handler_kwargs: dict[str, Any] | None = None,
        timeout: float | None = None,
        queue: str | None = None,
        bound_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(task_id, str) or not task_id:
            raise ConfigError(f"A task id must be a non-empty string, got {task_id!r}")
        if not callable(func):
            raise ConfigError(f"Task '{task_id}': {func!r} is not callable")
        if max_cycles is not None and (not isinstance(max_cycles, int) or max_cycles < 1):
            raise ConfigError(f"Task '{task_id}': max_cycles must be a whole number >= 1, got {max_cycles!r}")
        if max_retries is not None and (not isinstance(max_retries, int) or max_retries < 0):
            raise ConfigError(f"Task '{task_id}': max_retries must be a whole number >= 0, got {max_retries!r}")
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ConfigError(f"Task '{task_id}': timeout must be a positive number of seconds, got {timeout!r}")
        if handler_kwargs is not None and not isinstance(handler_kwargs, dict):
            raise ConfigError(f"Task '{task_id}': handler_kwargs must be a dict, got {type(handler_kwargs).__name__}")
        if handler_kwargs and handler_type in (None, "direct"):
            raise ConfigError(
                f"Task '{task_id}': handler_kwargs {sorted(handler_kwargs)} given but the task runs on the 'direct' "
                f"handler, which takes no settings. Did you forget handler='docker' (or another handler)?"
            )
        self._set_identity(task_id, func, bound_kwargs)
        self.inject_context = inject_context
        self.resolve_keyword_args = resolve_keyword_args
        self.handler_type = handler_type
        self.handler_kwargs = handler_kwargs
        self.max_cycles = max_cycles
        self.retry_policy = retry_policy
        self.max_retries = retry_policy.max_retries if retry_policy is not None else max_retries
        self.timeout = timeout
        self.queue = queue
        if register_to_context:
            self._register()

    def _set_identity(self, task_id: str, func: Callable[..., Any], bound_kwargs: dict[str, Any] | None) -> None:
        """State derived from the id and the function (shared by construction and unpickling)."""
        self._task_id = task_id
        self.result_key = task_id + ".__result__"
        self.func = func
        self._bound_kwargs: dict[str, Any] = dict(bound_kwargs or {})
        self.is_async = _is_coroutine_function(func)
        self._plans: dict[int, tuple[tuple[str, str, bool], ...]] = {}
        self._simple = False  # no context, no parameters, no bound values: call func() directly
        self.__name__ = getattr(func, "__name__", task_id)
        self.__qualname__ = getattr(func, "__qualname__", task_id)
        self.__doc__ = getattr(func, "__doc__", None)
        self.__wrapped__ = func

    @property
    def task_id(self) -> str:
        return self._task_id

    @property
    def bound_kwargs(self) -> dict[str, Any]:
        return dict(self._bound_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "task_id" in kwargs and not args:
            new_id = kwargs.pop("task_id")
            return self._bind(new_id, kwargs)
        return self.func(*args, **kwargs)

    def _bind(self, task_id: str, kwargs: dict[str, Any]) -> TaskWrapper:
        return TaskWrapper(
            task_id,
            self.func,
            inject_context=self.inject_context,
            handler_type=self.handler_type,
            resolve_keyword_args=self.resolve_keyword_args,
            max_cycles=self.max_cycles,
            max_retries=self.max_retries,
            retry_policy=self.retry_policy,
            handler_kwargs=self.handler_kwargs,
            timeout=self.timeout,
            queue=self.queue,
            bound_kwargs={**self._bound_kwargs, **kwargs},
        )

    def run_in(
        self,
        context: ExecutionContext,
        task_context: TaskExecutionContext | None = None,
        data: Any = NO_DATA,
    ) -> Any:
        """Call the function with its parameters filled (see SPEC §4.3) and return its result."""
        if data is NO_DATA and task_context is not None:
            data = task_context.input_data
        if self._simple and data is NO_DATA:
            result = self.func()
            return _await(result) if self.is_async else result
        args, kwargs = self.call_arguments(context, task_context, data)
        result = self.func(*args, **kwargs) if kwargs else self.func(*args)
        if self.is_async:
            result = _await(result)
        return result

    def call_arguments(
        self, context: ExecutionContext, task_context: TaskExecutionContext | None = None, data: Any = NO_DATA
    ) -> tuple[list[Any], dict[str, Any]]:
        """The positional and keyword arguments the function gets (SPEC §4.3), without calling it.

        With ``inject_context`` the task context is the first positional argument; remote handlers
        replace it with their proxy.
        """
        args: list[Any] = []
        skip = 0
        if self.inject_context:
            if task_context is None:
                task_context = context.current_task_context or context.create_task_context(self._task_id)
            args.append(task_context)
            skip = 1
        if data is not NO_DATA:
            args.append(data)
            skip += 1
        plans = self._plans
        plan = plans.get(skip)
        if plan is None:
            plan = plans[skip] = _param_plan(self.func, skip)
        if skip == 0 and not plan and not self._bound_kwargs and not self.inject_context:
            self._simple = True
        if plan:
            return args, self._resolve(plan, context)
        return args, self._bound_kwargs

    def _resolve(self, plan: tuple[tuple[str, str, bool], ...], context: ExecutionContext) -> dict[str, Any]:
        bound = self._bound_kwargs
        get = context.channel.get
        resolve = self.resolve_keyword_args
        kwargs: dict[str, Any] = {}
        for name, result_key, has_default in plan:
            if name in bound:
                kwargs[name] = bound[name]
                continue
            if resolve:
                value = get(result_key, _MISSING)
                if value is _MISSING:
                    value = get(name, _MISSING)
                if value is not _MISSING:
                    kwargs[name] = value
                    continue
            if not has_default:
                raise TaskError(
                    f"Task '{self._task_id}' needs parameter '{name}', but no task named '{name}' has a result and "
                    f"the channel has no key '{name}'. Run a task '{name}' before it, pass it as an input "
                    f"(wf.execute({name}=...)), bind it ({self.__name__}(task_id=..., {name}=...)) or give it a "
                    f"default value.",
                    self._task_id,
                )
        for name, value in bound.items():
            kwargs.setdefault(name, value)
        return kwargs

    def __reduce__(self) -> Any:
        # The function and options travel once per pickle in a template shared by every task made
        # from them; each task adds only its id and bound values (see _TaskTemplate).
        key = _pickled_fields(self)
        template = _templates.get(tuple(map(id, key)))
        if template is None:
            template = _TaskTemplate.for_key(key)
        return (_task_from_template, (template, self._task_id, self._bound_kwargs or None))

    def __repr__(self) -> str:
        return f"TaskWrapper({self._task_id!r})"


#: The settings a pickled TaskWrapper keeps besides its function, id and bound values. State derived
#: from the function is recomputed when it is loaded; caches, graph links and contexts are not kept.
PICKLED_OPTIONS = (
    "inject_context",
    "handler_type",
    "resolve_keyword_args",
    "max_cycles",
    "max_retries",
    "retry_policy",
    "handler_kwargs",
    "timeout",
    "queue",
)
_pickled_fields = operator.attrgetter("func", *PICKLED_OPTIONS)
# Templates by the identities of their function and options (they hold those objects, so the ids
# stay valid while cached). Bounded like the parameter-plan cache.
_templates: dict[tuple[int, ...], _TaskTemplate] = {}
_TEMPLATE_ID = "".join(("<graflow-task-template", ">"))  # a private object: compared by identity


class _TaskTemplate:
    """What every TaskWrapper with the same function and options shares, pickled once per pickle.

    It holds the instance state of a prototype wrapper built by the regular unpickling path
    (:func:`_rebuild_task_wrapper`, hence ``_set_identity``); :func:`_task_from_template` copies
    it, gives each task fresh empty caches and fills in what depends on the task id and the bound
    values. A 10,000-task checkpoint of one function thus stores and loads ten thousand
    ``(template, id, bound values)`` triples instead of ten thousand option dicts. The tests in
    ``test_checkpoint_pickling.py`` check that this stays equal to construction.
    """

    __slots__ = ("by_id", "fresh", "key", "state")

    def __init__(self, func: Callable[..., Any], options: tuple[Any, ...]) -> None:
        if len(options) != len(PICKLED_OPTIONS):
            raise TypeError(f"a task template needs {len(PICKLED_OPTIONS)} options, got {len(options)}")
        self.key = (func, *options)
        proto = _rebuild_task_wrapper(_TEMPLATE_ID, func, dict(zip(PICKLED_OPTIONS, options)))
        state = proto.__dict__
        # fields _set_identity fell back to the task id for (a callable without __name__, say)
        self.by_id = tuple(k for k, v in state.items() if v is _TEMPLATE_ID)
        # per-instance containers (caches, pending edges, bound values): each task gets its own
        self.fresh = tuple(
            (k, type(v)) for k, v in state.items() if type(v) in (dict, list, set) and k not in PICKLED_OPTIONS
        )
        self.state = state

    @classmethod
    def for_key(cls, key: tuple[Any, ...]) -> _TaskTemplate:
        template = cls(key[0], key[1:])
        if len(_templates) >= 1_000:
            _templates.clear()
        _templates[tuple(map(id, key))] = template
        return template

    def __reduce__(self) -> Any:
        return (_TaskTemplate, (self.key[0], self.key[1:]))


def _task_from_template(template: _TaskTemplate, task_id: str, bound_kwargs: dict[str, Any] | None) -> TaskWrapper:
    """Unpickling path of a TaskWrapper (see :class:`_TaskTemplate`)."""
    state = template.state.copy()
    for key, factory in template.fresh:
        state[key] = factory()
    for key in template.by_id:
        state[key] = task_id
    state["_task_id"] = task_id
    state["result_key"] = task_id + ".__result__"
    if bound_kwargs:
        state["_bound_kwargs"] = dict(bound_kwargs)
    wrapper = object.__new__(TaskWrapper)
    wrapper.__dict__ = state
    return wrapper


def _rebuild_task_wrapper(task_id: str, func: Callable[..., Any], options: dict[str, Any]) -> TaskWrapper:
    """Builds template prototypes; also loads pickles written before templates (checkpoint schema 2)."""
    wrapper = TaskWrapper.__new__(TaskWrapper)
    Executable.__init__(wrapper)
    wrapper._set_identity(task_id, func, options.pop("bound_kwargs", None))
    for key, value in options.items():
        setattr(wrapper, key, value)
    return wrapper


def _await(awaitable: Any) -> Any:
    import asyncio

    async def runner() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(runner())
    # Called from inside a running event loop (a notebook, an async handler): use a private thread.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(runner())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which re-raises it
            box["error"] = exc

    t = threading.Thread(target=target, name="graflow-async-task")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class ParallelGroup(Executable):
    """Members that run side by side under a coordinator; successors start after all of them.

    ``(a | b | c)`` makes one group of three. ``a | (b >> c)`` has two members, the second a chain.
    """

    _is_group = True

    def __init__(self, tasks: Iterable[Executable], name: str | None = None) -> None:
        super().__init__()
        self.tasks: list[Executable] = list(tasks)
        if len(self.tasks) < 1:
            raise GraphCompilationError("A parallel group needs at least one member")
        self._auto_named = name is None
        graph = _first_graph(_current_graph(), *(t._graph for t in self.tasks))
        if name is None:
            name = _next_group_name(graph)
        self._task_id = name
        self.result_key = name + ".__result__"
        self._execution_config: dict[str, Any] = {"backend": None, "backend_config": {}, "policy": None}
        for member in self.tasks:
            for node in member._nodes():
                node._register(graph)
        if self._register(graph) is not None:
            self._claim_members()

    def _claim_members(self) -> None:
        graph = self._graph
        assert graph is not None
        for member in self.tasks:
            for node in _owned_nodes(member):
                graph.set_owner(node.task_id, self._task_id)

    @classmethod
    def _combine(cls, left: Executable, right: Executable) -> ParallelGroup:
        """``left | right``. A fresh left group grows in place, so ``a | b | c | ...`` stays linear."""
        if isinstance(left, ParallelGroup) and left._is_fresh():
            if isinstance(right, ParallelGroup) and right._is_fresh():
                right._dissolve()
                left._add_members(list(right.tasks))
            else:
                left._add_members([right])
            return left
        members: list[Executable] = []
        for side in (left, right):
            if isinstance(side, ParallelGroup) and side._is_fresh():
                side._dissolve()
                members.extend(side.tasks)
            else:
                members.append(side)
        return cls(members)

    def _add_members(self, members: list[Executable]) -> None:
        graph = self._graph
        self.tasks.extend(members)
        for member in members:
            for node in member._nodes():
                node._register(graph)
            if graph is not None:
                for node in _owned_nodes(member):
                    graph.set_owner(node.task_id, self._task_id)

    def _is_fresh(self) -> bool:
        """An auto-named group nobody wired yet can be merged into a bigger one (``a | b | c``)."""
        if not self._auto_named:
            return False
        graph = self._graph
        if graph is None:
            return not self._pending_edges
        return not graph.successors(self._task_id) and not graph.predecessors(self._task_id)

    def _dissolve(self) -> None:
        graph = self._graph
        if graph is None:
            return
        for member in graph.get_parallel_group_members(self._task_id):
            graph.owner_of.pop(member, None)
        graph._nodes.pop(self._task_id, None)
        graph._succ.pop(self._task_id, None)
        graph._pred.pop(self._task_id, None)
        graph.version += 1
        self._graph = None

    @property
    def task_id(self) -> str:
        return self._task_id

    @property
    def member_ids(self) -> list[str]:
        return [m.task_id if not isinstance(m, SequentialTask) else m.leftmost.task_id for m in self.tasks]

    def set_group_name(self, name: str) -> ParallelGroup:
        if self._graph is not None:
            self._graph.rename_node(self._task_id, name)
        self._task_id = name
        self.result_key = name + ".__result__"
        self._auto_named = False
        return self

    def with_execution(
        self,
        backend: Any = None,
        backend_config: dict[str, Any] | None = None,
        policy: Any = None,
    ) -> ParallelGroup:
        """Choose the coordinator (``"direct"``, ``"threading"``, ``"redis"`` or the enum) and/or policy.

        Omitted arguments keep their current value: setting the backend never resets the policy.
        """
        if backend is not None:
            from graflow.coordination.coordinator import backend_name

            name = backend_name(backend)
            from graflow import plugins

            plugins.get_coordinator_class(name)  # fail now, naming what is installed
            self._execution_config["backend"] = name
        if backend_config is not None:
            if not isinstance(backend_config, dict):
                raise ConfigError(f"Parallel group '{self._task_id}': backend_config must be a dict")
            self._execution_config["backend_config"] = {**self._execution_config["backend_config"], **backend_config}
        if policy is not None:
            self.with_policy(policy)
        return self

    def with_policy(self, policy: Any, **kwargs: Any) -> ParallelGroup:
        """Attach a group policy: a name with its arguments, an instance or a class."""
        from graflow.core.handlers.group_policy import resolve_group_policy

        try:
            resolved = resolve_group_policy(policy, **kwargs)
            resolved.validate(self._task_id, self.member_ids)
        except ConfigError as exc:
            if self._task_id not in str(exc):
                exc.args = (f"Parallel group '{self._task_id}': {exc}",)
            raise
        self._execution_config["policy"] = resolved
        return self

    @property
    def policy(self) -> GroupExecutionPolicy:
        from graflow.core.handlers.group_policy import StrictGroupPolicy

        return self._execution_config["policy"] or StrictGroupPolicy()

    def _entries(self) -> list[Executable]:
        return [self]

    def _exits(self) -> list[Executable]:
        return [self]

    def _nodes(self) -> list[Executable]:
        return [self]

    def _register(self, graph: TaskGraph | None = None) -> TaskGraph | None:
        was = self._graph
        result = super()._register(graph)
        if result is not None and was is not result:
            for member in self.tasks:
                for node in member._nodes():
                    node._register(result)
            self._claim_members()
        return result

    def __repr__(self) -> str:
        return f"ParallelGroup({self._task_id}: {', '.join(m.task_id for m in self.tasks)})"


def _owned_nodes(member: Executable) -> list[Executable]:
    if isinstance(member, SequentialTask):
        return member._nodes()
    return [member]


def _next_group_name(graph: TaskGraph | None) -> str:
    from graflow.core.workflow import building_workflow

    wf = building_workflow()
    if wf is not None and (graph is None or graph is wf.graph):
        return wf.get_next_group_name()
    return f"ParallelGroup_{next(_group_counter)}"


def collect_nodes(executable: Executable) -> list[Executable]:
    """Every node that adding ``executable`` to a graph adds: a chain's tasks, group members and
    their tails, and every task wired from them (``_pending_edges``), each once, in visiting order."""
    seen: set[int] = set()
    order: list[Executable] = []
    stack = list(executable._nodes()) if isinstance(executable, SequentialTask) else [executable]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, ParallelGroup):
            stack.extend(n for member in node.tasks for n in member._nodes())
        stack.extend(node._pending_edges)
    return order


def chain(*tasks: Executable) -> SequentialTask:
    """``chain(a, b, c)`` is ``a >> b >> c``."""
    if not tasks:
        raise GraphCompilationError("chain() needs at least one task")
    for t in tasks:
        _check_operand(t, "chain")
    return SequentialTask(list(tasks))


def parallel(*tasks: Executable, name: str | None = None) -> ParallelGroup:
    """``parallel(a, b, c)`` is ``a | b | c``."""
    if not tasks:
        raise GraphCompilationError("parallel() needs at least one task")
    for t in tasks:
        _check_operand(t, "parallel")
    return ParallelGroup(list(tasks), name=name)


__all__ = [
    "Executable",
    "ParallelGroup",
    "SequentialTask",
    "Task",
    "TaskWrapper",
    "chain",
    "collect_nodes",
    "parallel",
]
