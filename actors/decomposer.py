"""The decomposer actor: turns a dispatched task into steps (declarative tool intents).

Rule-based for now: a task that names its tool and inputs becomes one step. A task that
cannot be decomposed is answered with ``steps_rejected`` saying why.
"""

from __future__ import annotations

from actors.context import Context
from actors.outcome import Outcome
from actors.runtime import ActorSpec
from bus.events import StepsProposed, StepsRejected, TaskReady
from bus.plan import Check
from planner.catalog import Catalog
from planner.decompose import DecompositionError, decompose
from store.records import StoredEvent
from store.state import WorkflowState


def make_spec(catalog: Catalog) -> ActorSpec:
    async def handle(ctx: Context, rec: StoredEvent, state: WorkflowState) -> Outcome:
        data = rec.event.data
        if not isinstance(data, TaskReady) or state.done:
            return []
        task = state.tasks.get(data.task.id)
        if task is None or task.status != "ready" or task.attempt != data.attempt:
            return []  # decomposed already, or superseded by a later attempt
        try:
            steps = decompose(data.task, catalog, attempt=data.attempt)
        except DecompositionError as exc:
            check = Check(
                name="decomposable",
                passed=False,
                message=exc.message,
                fix="give the task a tool and its inputs, or configure a model for decomposition",
                path=f"tasks.{data.task.id}",
            )
            return [StepsRejected(task_id=data.task.id, checks=(check,))]
        return [StepsProposed(task_id=data.task.id, steps=tuple(steps))]

    return ActorSpec(kind="decomposer", handles=frozenset({TaskReady.TYPE}), handler=handle)
