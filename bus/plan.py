"""The plan a workflow runs: a DAG of tasks, each decomposed into declarative tool intents.

These are wire types (frozen msgspec Structs) so that events can carry them; the planner
builds them and the validator checks them. Stored values tolerate unknown fields (a newer
writer may add some); inbound requests are checked strictly at the intake.

Structs are declared ``gc=False`` (they hold only JSON-like data and never form reference
cycles), which keeps the garbage collector from rescanning millions of events on a long read.

Tool ``inputs`` and outputs are JSON objects whose shape is the tool's own schema (the tool
registry validates them), so they are typed as ``dict[str, Any]`` here and nowhere else.
An input value may reference an upstream output as the string ``"${task_id.field}"``.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Severity = Literal["info", "warning", "error"]
Complexity = Literal["low", "medium", "high"]


class Branch(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One way on from a flow's task (``Task.branches``, tried in order, the first that holds is
    taken): to task ``to`` when ``when`` (CEL over the task's ``output``, :mod:`planner.conditions`)
    holds, or always without one. ``exhausted`` > 0 marks a loop's way back on its last pass: it
    was taken that many times already, so it is never taken again (``planner.flows``)."""

    to: str
    when: str | None = None
    exhausted: int = 0


class Task(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One node of the plan's DAG.

    ``confidence`` (0 to 1: how sure the planner is that the task does what the request
    needs), ``rationale``, ``complexity``, ``capabilities`` (what an agent needs beyond the
    tool) and ``parallelizable`` (false: never runs at the same time as another task of the
    workflow) are the planner's metadata; the deployment's thresholds act on the confidence
    (``cadre.planner.confidence``).
    """

    id: str
    description: str = ""
    depends_on: tuple[str, ...] = ()
    tool: str | None = None
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    fallback_tools: tuple[str, ...] = ()
    capabilities: tuple[str, ...] = ()
    parallelizable: bool = True
    complexity: Complexity = "low"
    confidence: float = 1.0
    rationale: str = ""
    retries: int = 0
    pool: str | None = None  # the agent pool running its steps (the policy file's pools); None: unpooled agents
    # Checked conditions (CEL, ``planner.conditions``) its steps carry: ``pre`` over ``inputs``, checked
    # before the tool is called; ``post`` over ``inputs`` and ``output``, checked on the tool's output.
    pre: tuple[str, ...] = ()
    post: tuple[str, ...] = ()
    # A flow's task (``planner.flows``): where to go on after it (empty: to every dependent task, as in
    # any plan), and whether a person confirms its step before it runs (the agent asks for approval).
    branches: tuple[Branch, ...] = ()
    approval: bool = False


class Plan(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A DAG of tasks; ``output`` names the task whose output is the workflow's result;
    ``confidence`` is the planner's in the plan as a whole (a library reuse: its match score)."""

    nodes: tuple[Task, ...]
    output: str | None = None
    rationale: str = ""
    confidence: float = 1.0


class StepIntent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An atomic, declarative tool call the validator checks before an agent runs it."""

    id: str
    task_id: str
    tool: str
    operation: str = ""
    inputs: dict[str, Any] = msgspec.field(default_factory=dict)
    expected_outputs: tuple[str, ...] = ()
    preconditions: tuple[str, ...] = ()
    postconditions: tuple[str, ...] = ()
    rollback: str | None = None
    fallback_tools: tuple[str, ...] = ()
    requires_approval: bool = False
    # The documentation the step was grounded in: the refs (``<source>#<heading>``) of the
    # passages retrieved for its task (:class:`cadre.bus.effects.Grounded`).
    documentation_references: tuple[str, ...] = ()
    # Checked conditions (CEL, ``planner.conditions``), which the agent evaluates and records; the
    # prose ``preconditions`` and ``postconditions`` above describe, these decide. ``pre`` (over
    # ``inputs``) failing blocks the step before its tool is called; ``post`` (over ``inputs`` and
    # ``output``) failing fails the call, naming the condition (fallbacks and recovery may act).
    pre: tuple[str, ...] = ()
    post: tuple[str, ...] = ()


class Check(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One validation check and its outcome; ``fix`` suggests how to make it pass."""

    name: str
    passed: bool
    severity: Severity = "error"
    message: str = ""
    fix: str | None = None
    path: str | None = None


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A failure as data: a stable code and a message for people."""

    code: str
    message: str
