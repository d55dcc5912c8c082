"""Which tasks can run: graph questions about a plan, answered over plain data.

The planner actor keeps each task's status (a string: ``"pending"``, ``"ready"``, ``"running"``,
``"completed"``, ``"failed"``, ``"skipped"``: a flow's branch not taken, which counts as done; a task
with no status yet counts as pending) and asks these
functions what to do next. They read the plan and the statuses, never change them, and do
no I/O, so replays and tests call them directly.

Graph functions (:func:`topo_order`, :func:`depth`, :func:`upstream`, :func:`find_cycle`)
assume a plan that :func:`planner.validation.validate_plan` accepted; on any other plan they
ignore dependencies on unknown task ids and use the first of several tasks sharing an id,
and those that need a DAG raise :class:`PlanCycle` on a cycle.

    CadreError
     └─ SchedulingError               a graph question that has no answer (code "scheduling_error")
         ├─ PlanCycle                 the dependencies form a cycle (code "plan_cycle")
         └─ UnknownTask               a task id the plan does not have (code "unknown_task")
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence

from cadre.bus.errors import CadreError
from cadre.bus.plan import Plan, Task

__all__ = [
    "COMPLETED",
    "FAILED",
    "PENDING",
    "READY",
    "RUNNING",
    "SKIPPED",
    "PlanCycle",
    "SchedulingError",
    "UnknownTask",
    "Upstream",
    "blocked_by_failure",
    "depth",
    "dispatchable",
    "find_cycle",
    "is_finished",
    "ready_tasks",
    "topo_order",
    "upstream",
]

PENDING = "pending"
READY = "ready"
RUNNING = "running"
COMPLETED = "completed"
FAILED = "failed"
SKIPPED = "skipped"
DONE = frozenset({COMPLETED, SKIPPED})


class SchedulingError(CadreError):
    """A graph question about a plan that has no answer."""

    code = "scheduling_error"


class PlanCycle(SchedulingError):
    """The plan's dependencies form a cycle; ``cycle`` is its path, first id repeated last."""

    code = "plan_cycle"

    def __init__(self, cycle: Sequence[str]) -> None:
        super().__init__(
            f"the plan's dependencies form a cycle: {' -> '.join(cycle)} (each task depends on the next); "
            "remove one of these dependencies"
        )
        self.cycle = tuple(cycle)


class UnknownTask(SchedulingError):
    """A task id the plan does not have."""

    code = "unknown_task"

    def __init__(self, task_id: str, known: Iterable[str]) -> None:
        super().__init__(f"the plan has no task {task_id!r}; its tasks are: {', '.join(known) or 'none'}")
        self.task_id = task_id


class _Tables:
    """What the graph questions read of one plan, made once per plan (a plan never changes: a
    frozen struct of tuples): the dependency graph, the first task of each id, every task's
    upstream as it is asked for, each task's (id, dependencies) in plan order, and whether every
    task may run beside others (``parallelizable``)."""

    __slots__ = ("above", "edges", "first", "graph", "ids", "parallel")

    def __init__(self, plan: Plan) -> None:
        nodes = plan.nodes
        ids = tuple([t.id for t in nodes])
        known = set(ids)
        graph: dict[str, tuple[str, ...]] = {}
        first: dict[str, Task] = {}
        parallel = True
        for task in nodes:
            if task.id not in graph:
                deps = task.depends_on
                if not known.issuperset(deps) or len(set(deps)) != len(deps):  # unknown or repeated ids
                    deps = tuple(dict.fromkeys(d for d in deps if d in known))
                graph[task.id] = deps
                first[task.id] = task
                parallel = parallel and task.parallelizable
        self.graph = graph
        self.first = first
        self.ids = ids
        self.edges = tuple([(t.id, t.depends_on) for t in nodes])
        self.above = Upstream(graph)
        self.parallel = parallel


_TABLES: dict[int, tuple[Plan, _Tables]] = {}
_TABLES_KEPT = 256


def _tables(plan: Plan) -> _Tables:
    """``plan``'s :class:`_Tables`, by the plan's identity: the planner, the validator and the agent
    ask about the plan a workflow's state holds (the same object from one event to the next) many
    times per event. The entry holds the plan, so its id is not reused while it is kept; the
    table starts over past :data:`_TABLES_KEPT` plans."""
    hit = _TABLES.get(id(plan))
    if hit is not None and hit[0] is plan:
        return hit[1]
    tables = _Tables(plan)
    if len(_TABLES) >= _TABLES_KEPT:
        _TABLES.clear()
    _TABLES[id(plan)] = (plan, tables)
    return tables


def _graph(plan: Plan) -> dict[str, tuple[str, ...]]:
    """Task id -> ids of the known tasks it depends on, in plan order (first of duplicate ids wins).
    Shared: read it, never change it."""
    return _tables(plan).graph


def find_cycle(plan: Plan) -> list[str] | None:
    """One dependency cycle as a path ``[a, b, a]`` (a depends on b, b on a), or None if acyclic.

    Deterministic: the search starts from tasks in plan order and follows ``depends_on`` in order.
    """
    graph = _graph(plan)
    done: set[str] = set()
    for root in graph:
        if root in done:
            continue
        # Iterative DFS; `path` is the chain of tasks on the stack (the "grey" set), in order.
        path = [root]
        on_path = {root}
        stack = [iter(graph[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
                continue
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(graph[nxt]))
    return None


def topo_order(plan: Plan) -> list[str]:
    """Task ids so that every task comes after all its dependencies.

    Stable: of the tasks whose dependencies are all placed, the one earliest in the plan goes
    first, so a plan already written in dependency order keeps its order. Raises
    :class:`PlanCycle` if there is no such order.
    """
    graph = _graph(plan)
    ids = list(graph)
    position = {task_id: i for i, task_id in enumerate(ids)}
    waiting = {task_id: len(deps) for task_id, deps in graph.items()}
    dependents: dict[str, list[str]] = {task_id: [] for task_id in ids}
    for task_id, deps in graph.items():
        for dep in deps:
            dependents[dep].append(task_id)
    ready = [position[t] for t in ids if waiting[t] == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        task_id = ids[heapq.heappop(ready)]
        order.append(task_id)
        for dependent in dependents[task_id]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                heapq.heappush(ready, position[dependent])
    if len(order) < len(ids):
        raise PlanCycle(find_cycle(plan) or [t for t in ids if t not in set(order)])
    return order


def depth(plan: Plan) -> int:
    """The number of tasks on the longest dependency chain (0 for an empty plan, 1 with no dependencies)."""
    graph = _graph(plan)
    level: dict[str, int] = {}
    for task_id in topo_order(plan):
        level[task_id] = 1 + max((level[d] for d in graph[task_id]), default=0)
    return max(level.values(), default=0)


def upstream(plan: Plan, task_id: str) -> set[str]:
    """Every task ``task_id`` depends on, directly or through other tasks (not itself, unless in a cycle)."""
    tables = _tables(plan)
    if task_id not in tables.graph:
        raise UnknownTask(task_id, tables.graph)
    return set(tables.above.of(task_id))


class Upstream:
    """:func:`upstream` of many tasks of one plan, each answered once and reused by the next.

    A search that meets a task whose answer is known takes that answer whole instead of walking
    it again, so asking for every task of a plan written in dependency order costs one pass over
    the edges plus the set unions (done in C), not a walk of the graph per task.
    """

    def __init__(self, graph: Mapping[str, Sequence[str]]) -> None:
        self._graph = graph
        self._known: dict[str, frozenset[str]] = {}

    @classmethod
    def of_plan(cls, plan: Plan) -> Upstream:
        return cls(_graph(plan))

    def of(self, task_id: str) -> frozenset[str]:
        """The tasks ``task_id`` depends on, directly or not (empty for an unknown id)."""
        found = self._known.get(task_id)
        if found is not None:
            return found
        seen: set[str] = set()
        todo = list(self._graph.get(task_id, ()))
        while todo:
            dep = todo.pop()
            if dep in seen:
                continue
            seen.add(dep)
            known = self._known.get(dep)
            if known is not None:
                seen |= known  # its own upstream is already complete
            else:
                todo.extend(self._graph.get(dep, ()))
        result = self._known[task_id] = frozenset(seen)
        return result


def _pending(status: Mapping[str, str], task_id: str) -> bool:
    return status.get(task_id, PENDING) == PENDING


def ready_tasks(plan: Plan, status: Mapping[str, str]) -> list[str]:
    """Pending tasks (status ``"pending"`` or none) whose dependencies have all ``"completed"`` (or were
    ``"skipped"``: a flow's branch not taken), in plan order.

    A dependency on an unknown task never completes, so such a task is never ready.
    """
    ready: dict[str, None] = {}
    get = status.get
    for task_id, depends_on in _tables(plan).edges:  # loops, not all() over generators: called per event
        if task_id in ready or get(task_id, PENDING) != PENDING:
            continue
        for dep in depends_on:
            if get(dep) not in DONE:
                break
        else:
            ready[task_id] = None
    return list(ready)


def dispatchable(plan: Plan, status: Mapping[str, str]) -> list[str]:
    """The :func:`ready_tasks` to start now, honouring ``parallelizable: false``.

    A task that is not parallelizable never runs at the same time as another task of the
    workflow: it starts alone, when no other task is ready or running (statuses ``"ready"`` and
    ``"running"``), and nothing starts while it runs. Ready tasks start in plan order, up to
    the first that must wait, so a waiting task is not overtaken by the tasks after it.
    """
    tables = _tables(plan)
    if tables.parallel:  # nothing waits for anything else to stop running
        return ready_tasks(plan, status)
    tasks = tables.first
    active = [tid for tid in tasks if status.get(tid) in (READY, RUNNING)]
    if any(not tasks[tid].parallelizable for tid in active):
        return []
    start: list[str] = []
    for tid in ready_tasks(plan, status):
        if not tasks[tid].parallelizable:
            return [tid] if not active and not start else start
        start.append(tid)
    return start


def is_finished(plan: Plan, status: Mapping[str, str]) -> bool:
    """Whether every task has ``"completed"`` or was ``"skipped"`` (vacuously true for an empty plan)."""
    get = status.get
    for task_id in _tables(plan).ids:  # noqa: SIM110  # a loop: half the cost of all() over a generator
        if get(task_id) not in DONE:
            return False
    return True


def blocked_by_failure(plan: Plan, status: Mapping[str, str]) -> list[str]:
    """Pending tasks that can never run because a task upstream of them ``"failed"``, in plan order.

    Together with the failed tasks themselves, these are what a re-plan has to replace.
    """
    failed = {task_id for task_id, s in status.items() if s == FAILED}
    if not failed:
        return []
    graph = _graph(plan)
    above = Upstream(graph)
    return [task_id for task_id in graph if _pending(status, task_id) and above.of(task_id) & failed]
