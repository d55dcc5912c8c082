"""Rule-based decomposition: a task that names its tool becomes one declarative step.

This is the decomposer used when no model may be consulted (and the baseline an LLM
decomposer is compared with). It copies the task's tool, inputs and fallbacks into a
:class:`bus.plan.StepIntent` and fills the declarative parts from the tool catalog: what the
step is expected to return, what must hold before and after, and how to undo it.

Step ids are unique per attempt, so that the events and idempotency keys of a retried task
never collide with those of the failed attempt:

* attempt 1: ``<task_id>.s<n>`` (``top.s1``), the common case, kept short;
* attempt k > 1: ``<task_id>.a<k>.s<n>`` (``top.a2.s1``).

Task ids are tokens without dots, so a step id always starts with its task id and a dot.

    CadreError
     └─ DecompositionError            a task the rules cannot turn into steps (code "cannot_decompose")
"""

from __future__ import annotations

import functools
from typing import NoReturn

from pydantic import BaseModel

from cadre.bus.errors import CadreError
from cadre.bus.plan import StepIntent, Task
from cadre.planner.catalog import Catalog, Safety
from cadre.planner.refs import copy_value

__all__ = ["DecompositionError", "decompose", "step_id"]


class DecompositionError(CadreError):
    """The task cannot be decomposed by rules; the caller records it as the task's failure."""

    code = "cannot_decompose"

    def __init__(self, task_id: str, reason: str, fix: str) -> None:
        super().__init__(f"cannot decompose task {task_id!r}: {reason}; {fix}")
        self.task_id = task_id
        self.reason = reason
        self.fix = fix


def step_id(task_id: str, *, attempt: int = 1, index: int = 1) -> str:
    """The id of step ``index`` of ``task_id`` in ``attempt`` (both counted from 1)."""
    if attempt < 1 or index < 1:
        raise ValueError(f"attempt and index count from 1; got attempt={attempt}, index={index}")
    return f"{task_id}.s{index}" if attempt == 1 else f"{task_id}.a{attempt}.s{index}"


def decompose(task: Task, catalog: Catalog, *, attempt: int = 1) -> list[StepIntent]:
    """The steps that carry out ``task``: one step calling the task's tool with the task's inputs.

    Inputs are copied as written, references included; they are resolved when the step runs.
    ``requires_approval`` is set when the tool or one of its fallbacks requires approval (a
    step is approved as a whole, whichever tool ends up running). A prohibited tool still
    becomes a step: refusing it is the validator's job, so that the refusal is a recorded
    check with a fix. Raises :class:`DecompositionError` when the task names no tool or a tool
    the catalog does not have.
    """
    if task.tool is None or task.tool not in catalog:
        names = ", ".join(sorted(catalog)) or "(the catalog is empty)"
        _refuse(task, names)
    spec = catalog[task.tool]
    sid = step_id(task.id, attempt=attempt)
    preconditions = [f"inputs validate against {spec.input_model.__name__}"]
    if task.depends_on:
        preconditions.insert(0, f"upstream tasks completed: {', '.join(task.depends_on)}")
    rollback = (
        f"{spec.name} changed something outside cadre (idempotency key {sid!r}); "
        "no automatic undo: review and revert its effect by hand if the workflow is abandoned"
        if spec.safety is Safety.SIDE_EFFECT
        else None
    )
    approval = any(catalog[name].requires_approval for name in (task.tool, *task.fallback_tools) if name in catalog)
    required = _required(spec.output_model)
    return [
        StepIntent(
            id=sid,
            task_id=task.id,
            tool=spec.name,
            operation=task.description or spec.description,
            inputs=copy_value(task.inputs),  # the step must not alias the plan's dict
            expected_outputs=required,
            preconditions=tuple(preconditions),
            postconditions=(f"output validates against {spec.output_model.__name__}",),
            rollback=rollback,
            fallback_tools=task.fallback_tools,
            requires_approval=approval,
            pre=task.pre,
            post=task.post,
        )
    ]


def _refuse(task: Task, names: str) -> NoReturn:
    """Raise the :class:`DecompositionError` of a task that names no tool, or one the catalog lacks."""
    if task.tool is None:
        wanted = f" (it asks for capabilities: {', '.join(task.capabilities)})" if task.capabilities else ""
        raise DecompositionError(
            task.id,
            f"it names no tool{wanted} and the rule-based decomposer only runs named tools",
            f're-plan it with "tool": one of {names}',
        )
    raise DecompositionError(
        task.id, f"its tool {task.tool!r} is not in the catalog", f're-plan it with "tool": one of {names}'
    )


@functools.lru_cache(maxsize=1024)
def _required(model: type[BaseModel]) -> tuple[str, ...]:
    """The required fields of a tool's output model (a model's fields are fixed once it is defined)."""
    return tuple(name for name, field in model.model_fields.items() if field.is_required())
