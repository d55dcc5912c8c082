"""The request a client publishes to ``<prefix>.requests``: strict, because people type it.

Stored payloads tolerate unknown fields (a newer writer may add some), but an inbound
request rejects them, so a typo (``"budget": 1``) is an error rather than a silent default.
Errors name the JSON path: ``$.plan.nodes[0].depends_on``.

    {"request": "find the top customers", "budget_usd": 0.5,
     "intelligence": "adaptive", "mode": "adaptive", "idempotency_key": "order-42"}
    {"request": "find the top customers", "dry_run": true}
    {"plan": {"nodes": [{"id": "q", "tool": "sql.query", "inputs": {"sql": "select 1"}}]}}
"""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any, Literal

import msgspec
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from cadre.bus.errors import CadreError
from cadre.bus.events import WorkflowRequested
from cadre.bus.plan import Plan

MAX_REQUEST_BYTES = 256 * 1024
MAX_DEADLINE_S = 30 * 86400.0

Intelligence = Literal["basic", "adaptive", "intelligent", "autonomous"]
Mode = Literal["strict", "adaptive", "creative"]


class RequestError(CadreError):
    """A request that cannot be accepted; ``path`` locates the problem in the JSON."""

    code = "invalid_request"

    def __init__(self, message: str, path: str = "$", code: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        if code is not None:
            self.code = code

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "path": self.path}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskIn(_Strict):
    """One task of an explicit plan."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="unique id within the plan")
    description: str = Field(default="", max_length=2000)
    depends_on: list[str] = Field(default_factory=list, description="ids of tasks that must complete first")
    tool: str | None = Field(default=None, description="the tool that performs the task (see `cadre tools`)")
    inputs: dict[str, Any] = Field(
        default_factory=dict, description='tool inputs; "${task_id.field}" references an upstream output'
    )
    fallback_tools: list[str] = Field(default_factory=list, description="tools to try when the primary fails")
    capabilities: list[str] = Field(default_factory=list, description="what an agent needs beyond the tool")
    parallelizable: bool = Field(
        default=True, description="false: the task never runs at the same time as another task of the workflow"
    )
    complexity: Literal["low", "medium", "high"] = Field(default="low", description="how hard the task is")
    confidence: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="how sure the planner is that the task does what the request needs (0 to 1); "
        "below the deployment's approve_below it waits for approval, below reject_below the plan is rejected",
    )
    rationale: str = Field(default="", max_length=2000, description="why the task is needed")
    retries: int = Field(default=0, ge=0, le=10, description="times to re-run the task after a failure")
    pool: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="the agent pool that runs the task (the policy file's pools); none: the agents without a pool",
    )
    pre: list[str] = Field(
        default_factory=list,
        description="conditions (CEL over inputs) that must hold before the tool is called, e.g. "
        "\"inputs.path.startsWith('reports/')\"; one that does not blocks the step",
    )
    post: list[str] = Field(
        default_factory=list,
        description="conditions (CEL over inputs and output) the tool's output must meet, e.g. "
        '"size(output.rows) > 0"; one that does not fails the call',
    )


class PlanIn(_Strict):
    """An explicit plan: a DAG of tasks."""

    nodes: list[TaskIn] = Field(min_length=1, max_length=200)
    output: str | None = Field(default=None, description="the task whose output is the result (default: the last)")
    rationale: str = Field(default="", max_length=4000, description="why this plan answers the request")
    confidence: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="how sure the planner is that the plan answers the request (0 to 1); "
        "the deployment's thresholds act on it as on each task's",
    )


class RequestIn(_Strict):
    """A workflow request, as published to ``<prefix>.requests``."""

    request: str = Field(default="", max_length=20_000, description="what to do, in words")
    plan: PlanIn | None = Field(default=None, description="an explicit plan (skips planning)")
    budget_usd: float | None = Field(default=None, ge=0, description="cap on LLM spend for this workflow")
    intelligence: Intelligence | None = Field(
        default=None, description="which LLM consultations actors may make (unset: the deployment's default)"
    )
    mode: Mode | None = Field(
        default=None, description="how actors meet the unexpected (unset: the deployment's default)"
    )
    idempotency_key: str | None = Field(
        default=None, min_length=1, max_length=200, description="resubmitting with the same key returns the same run"
    )
    on_failure: Literal["fail", "compensate"] | None = Field(
        default=None,
        description="compensate: if the workflow fails, undo its completed steps (last first) before it "
        "ends as failed; unset: the deployment's on_failure",
    )
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        le=MAX_DEADLINE_S,
        description="cancel the workflow if it has not ended this many seconds after the request (at most 30 days)",
    )
    deadline: AwareDatetime | None = Field(
        default=None,
        description="cancel the workflow if it has not ended by this time (ISO 8601 with a time zone); "
        "give this or deadline_s, not both",
    )
    dry_run: bool = Field(
        default=False,
        description="plan, validate and decompose, then simulate the steps: no tool runs, no model is consulted "
        "for execution; the result lists the steps, approvals needed and the estimated cost",
    )

    @model_validator(mode="after")
    def _something_to_do(self) -> RequestIn:
        if not self.request.strip() and self.plan is None:
            raise ValueError('empty request: give "request" (words) or "plan" (an explicit plan)')
        if self.deadline_s is not None and self.deadline is not None:
            raise ValueError("two deadlines: give deadline_s (seconds from now) or deadline (a time), not both")
        return self


def _path(loc: tuple[int | str, ...]) -> str:
    out = "$"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_request(data: bytes) -> WorkflowRequested:
    """Validate a request's bytes; raise :class:`RequestError` with the path of the first problem."""
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestError(
            f"request is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES} (send large inputs by reference)",
            code="request_too_large",
        )
    if not data.strip():
        raise RequestError('empty message: send a JSON object such as {"request": "..."}', code="empty_request")
    try:
        model = RequestIn.model_validate_json(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        path = _path(tuple(err["loc"]))
        kind = err["type"]
        if kind == "json_invalid":
            raise RequestError(f"request is not valid JSON: {err['msg']}", code="invalid_json") from None
        if kind == "extra_forbidden":
            raise RequestError(f"unknown field at {path}; check its spelling", path, code="unknown_field") from None
        if kind == "value_error" and "empty request" in err["msg"]:
            raise RequestError(err["msg"].removeprefix("Value error, "), path, code="empty_request") from None
        got = json.dumps(err.get("input"))[:80] if "input" in err else "nothing"
        raise RequestError(f"{err['msg']} at {path} (got {got})", path) from None
    plan = None
    if model.plan is not None:
        plan = msgspec.convert(model.plan.model_dump(), Plan)
    return WorkflowRequested(
        request=model.request,
        plan=plan,
        budget_usd=model.budget_usd,
        intelligence=model.intelligence,
        mode=model.mode,
        idempotency_key=model.idempotency_key,
        dry_run=model.dry_run,
        on_failure=model.on_failure,
        resolved_steps=True,
        deadline_s=model.deadline_s,
        deadline=model.deadline.astimezone(UTC) if model.deadline is not None else None,
    )


def request_schema() -> dict[str, Any]:
    """The JSON Schema of a request (``cadre schema request``)."""
    return RequestIn.model_json_schema()
