"""Prompts and output schemas for LLM calls, and the validators of their answers.

Prompts are pure functions of their arguments: no dates, no randomness, tools in name
order, JSON written the same way every time. The same request therefore yields the same
prompt (a recorded call can be checked against a replayed one, and prompt caches hit).

The plan's output schema is ``bus.request.PlanIn``'s JSON Schema, the model an explicit
plan from a client is checked with, so a planned and a hand-written plan obey one format.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import msgspec

from cadre.bus.effects import Grounded
from cadre.bus.plan import Check, Plan
from cadre.bus.request import PlanIn
from cadre.planner.catalog import Catalog
from cadre.planner.providers.base import LLMRequest
from cadre.planner.providers.structured import InvalidOutput
from cadre.planner.validation import Limits, failed, validate_plan

__all__ = [
    "ADAPT_AFTER_FAILURE",
    "ADAPT_AFTER_REJECTION",
    "ADAPT_SCHEMA_NAME",
    "PLAN_SCHEMA",
    "PLAN_SCHEMA_NAME",
    "adapt_request",
    "adapt_validator",
    "plan_request",
    "plan_system_prompt",
    "plan_validator",
    "validate_plan_output",
]

PLAN_SCHEMA_NAME: Final = "emit_plan"


def _model_plan_schema() -> dict[str, Any]:
    """``PlanIn``'s schema without a task's ``pool``: agent pools are the deployment's to assign
    (the policy file's), not the model's, which is not told them."""
    schema = copy.deepcopy(PlanIn.model_json_schema())
    for name in ("pool", "pre", "post"):  # conditions: the decomposer's and the plan author's
        schema["$defs"]["TaskIn"]["properties"].pop(name, None)
    return schema


def _plan_json(plan: Plan) -> dict[str, Any]:
    """``plan`` as JSON for a prompt; a task without a pool says nothing of pools, nor one that is not
    a flow's of branches and approval."""
    out: dict[str, Any] = msgspec.to_builtins(plan)
    for node in out["nodes"]:
        if node.get("pool") is None:
            node.pop("pool", None)
        if not node.get("approval"):
            node.pop("approval", None)
        for name in ("pre", "post", "branches"):
            if not node.get(name):
                node.pop(name, None)
    return out


PLAN_SCHEMA: Final[dict[str, Any]] = _model_plan_schema()
"""JSON Schema of a plan (``additionalProperties: false`` at every level but tool inputs)."""

_PLAN_FORMAT: Final = """\
You are the planner of cadre, which runs a request as a workflow: a DAG of tasks, each one \
call of a tool from the catalog below. Turn the user's request into a plan and return it as \
one JSON object matching the `{schema_name}` schema. Return nothing else.

Plan format:
- "nodes": the tasks, in the order they would run. Each task has:
  - "id": a short unique token: letters, digits, "_" or "-" (no dots, no spaces), e.g. "top_customers".
  - "description": one sentence on what the task does.
  - "depends_on": the ids of the tasks that must finish first (those whose outputs it uses). No cycles.
  - "tool": the name of one tool from the catalog, exactly as written there.
  - "inputs": an object that matches that tool's input_schema.
  - "fallback_tools": tools to try, in order, when the primary tool fails; each must accept the same inputs. \
Usually empty.
  - "retries": how many times to re-run the task after a failure, 0 to 10. Use 0 unless the tool is \
read_only and may fail transiently.
  - "rationale": one sentence on why the task is needed.
  - "confidence": a number from 0 to 1: how sure you are that this task, with these inputs, does what \
the request needs (1: certain; 0.5: a guess). Be honest: a low confidence makes a person check the task \
before it runs.
  - "complexity": "low", "medium" or "high": how hard the task is.
  - "parallelizable": false if the task must not run at the same time as any other task (for example, \
it changes what another task reads); true otherwise.
  - "capabilities": what the task needs beyond its tool (for example "network", "filesystem"); usually empty.
- "output": the id of the task whose output answers the request (by default, the last task).
- "rationale": one or two sentences on why this plan answers the request.
- "confidence": a number from 0 to 1: how sure you are that the plan as a whole answers the request.

References: an input value that is exactly the string "${{task_id.field}}" stands for a field of an \
upstream task's output: "${{top.rows}}" is the "rows" field of task "top", "${{top.rows.0}}" its first \
item, "${{top}}" the whole output. The referenced task must be listed in "depends_on", and the field must \
exist in its tool's output_schema. A "${{...}}" inside a longer string is not a reference; it stays text.

Rules:
- Use only the tools in the catalog, and only the input fields their input_schema defines.
- Give every required input: a literal value taken from the request, or a reference to an upstream output.
- Use the fewest tasks that answer the request; tasks that do not depend on each other run in parallel.
- A side_effect tool changes something outside cadre: use it only when the request asks for that change. \
A tool that requires approval pauses the workflow until a person approves it.
- If the request cannot be done with these tools, return a plan of the closest useful tasks and say what \
is missing in "rationale".

Tool catalog, one JSON object per line (name, description, safety, requires_approval, input_schema, \
output_schema):
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def plan_system_prompt(catalog_description: Iterable[Mapping[str, Any]], *, schema_name: str = PLAN_SCHEMA_NAME) -> str:
    """The planner's system prompt: the plan format, the rules and the tool catalog.

    ``catalog_description`` is :meth:`planner.catalog.Catalog.describe`'s output. Tools whose
    ``safety`` is ``"prohibited"`` are left out (the validator would refuse them anyway).
    """
    tools = sorted(
        (dict(t) for t in catalog_description if t.get("safety") != "prohibited"), key=lambda t: str(t["name"])
    )
    keys = ("name", "description", "safety", "requires_approval", "input_schema", "output_schema")
    lines = [_dumps({k: t[k] for k in keys if k in t}) for t in tools]
    return _PLAN_FORMAT.format(schema_name=schema_name) + "\n".join(lines) + "\n"


def retrieved_tools(catalog_description: list[dict[str, Any]], grounding: Grounded | None) -> list[dict[str, Any]]:
    """The tools a prompt lists: all of them, or, when the grounding retrieved some from a large
    catalog, those (in the catalog's order)."""
    if grounding is None or grounding.tools is None:
        return catalog_description
    wanted = set(grounding.tools)
    return [t for t in catalog_description if t.get("name") in wanted]


def grounding_text(grounding: Grounded | None) -> str:
    """The prompt's section of what it is grounded in: past plans that worked, as examples, and
    passages of documentation, each named by its ref; "" when there is none (the prompt is then
    exactly what it was before grounding)."""
    if grounding is None or (not grounding.examples and not grounding.passages):
        return ""
    parts: list[str] = []
    if grounding.examples:
        lines = [
            f"<example name={_dumps(e.name)}>\n<request>{e.request.strip()}</request>\n"
            f"<plan>{_dumps(_plan_json(e.plan))}</plan>\n</example>"
            for e in grounding.examples
        ]
        parts.append(
            "Plans that answered similar requests before (examples: adapt them to this request, "
            'do not copy their values blindly; a "{{name}}" in an example stands for a value its request gave):'
            "\n<examples>\n" + "\n".join(lines) + "\n</examples>"
        )
    if grounding.passages:
        lines = [f"<passage ref={_dumps(p.ref)}>\n{p.text.strip()}\n</passage>" for p in grounding.passages]
        parts.append(
            "Documentation relevant to the request (tools' and the deployment's own):\n<documentation>\n"
            + "\n".join(lines)
            + "\n</documentation>"
        )
    return "\n\n".join(parts) + "\n\n"


def plan_request(
    request_text: str,
    catalog_description: list[dict[str, Any]],
    model: str,
    max_output_tokens: int,
    grounding: Grounded | None = None,
) -> LLMRequest:
    """The ``plan`` call for ``request_text``, grounded in ``catalog_description`` (cut to the
    retrieved tools of a large catalog) and in ``grounding``'s past plans and passages."""
    return LLMRequest(
        kind="plan",
        model=model,
        system=plan_system_prompt(retrieved_tools(catalog_description, grounding)),
        prompt=f"{grounding_text(grounding)}Plan this request:\n<request>\n{request_text.strip()}\n</request>",
        schema=copy.deepcopy(PLAN_SCHEMA),
        schema_name=PLAN_SCHEMA_NAME,
        max_output_tokens=max_output_tokens,
    )


def validate_plan_output(output: dict[str, Any]) -> Plan:
    """A model's plan as a :class:`bus.plan.Plan`; raises pydantic's ``ValidationError``
    (each error located by path) when it does not match the plan format."""
    model = PlanIn.model_validate(output)
    return msgspec.convert(model.model_dump(), Plan)


def _problem(check: Check) -> str:
    path = f"$.{check.path}" if check.path else "$"
    fix = f" (fix: {check.fix})" if check.fix and check.fix not in check.message else ""
    return f"{path}: {check.message}{fix}"


def plan_validator(catalog: Catalog, limits: Limits | None = None) -> Callable[[dict[str, Any]], Plan]:
    """A validator that also runs :func:`planner.validation.validate_plan`, so the repair
    round is told about unknown tools, bad inputs, cycles and dangling references too."""

    def validate(output: dict[str, Any]) -> Plan:
        plan = validate_plan_output(output)
        errors = failed(validate_plan(plan, catalog, limits or Limits()))
        if errors:
            raise InvalidOutput(_problem(c) for c in errors)
        return plan

    return validate


ADAPT_SCHEMA_NAME: Final = "emit_remaining_plan"

ADAPT_AFTER_FAILURE: Final = "A task of the workflow below failed for good (its retries are spent)."
ADAPT_AFTER_REJECTION: Final = (
    "The validator rejected the current plan of the workflow below, before its tasks ran, for the reasons given."
)

_ADAPT_TASK: Final = """\
{situation} Re-plan the work that \
remains so that the request can still be answered: return the tasks still to run as one JSON \
object matching the `{schema_name}` schema (the same plan format as above). Return nothing else.

- The completed tasks stay as they are, with their outputs: do not list them again; a new task \
may depend on them and reference their outputs.
- Do not reuse the id of any task of the current plan for a new task (ids already used: {used}).
- Avoid what failed: another tool, other inputs, or another way to the answer.
- "output" names the task (new or completed) whose output answers the request.
- If the request cannot be answered any more, return one task that records what went wrong.
"""


def adapt_request(
    request_text: str,
    plan: Plan,
    completed: Mapping[str, Any],
    failure: str,
    catalog_description: list[dict[str, Any]],
    *,
    output_chars: int = 1500,
    situation: str = ADAPT_AFTER_FAILURE,
    grounding: Grounded | None = None,
) -> LLMRequest:
    """The ``adapt`` call: re-plan what remains after a task failed for good (or, with
    ``situation`` :data:`ADAPT_AFTER_REJECTION`, after the validator rejected the plan).

    ``completed`` maps each completed task's id to its output (quoted up to
    ``output_chars`` characters each); ``failure`` says which task failed and how;
    ``grounding``: passages of documentation, and the tools retrieved from a large catalog (the
    current plan's tools are listed too).
    """
    if grounding is not None and grounding.tools is not None:
        kept = {t.tool for t in plan.nodes if t.tool}
        grounding = msgspec.structs.replace(grounding, tools=tuple(sorted({*grounding.tools, *kept})))
    used = ", ".join(sorted(t.id for t in plan.nodes))
    done = (
        "\n".join(f"- {tid}: {_clip(_dumps(completed[tid]), output_chars)}" for tid in sorted(completed)) or "- (none)"
    )
    current = _dumps(_plan_json(plan))
    prompt = (
        f"{grounding_text(grounding)}"
        f"{_ADAPT_TASK.format(situation=situation, schema_name=ADAPT_SCHEMA_NAME, used=used)}\n"
        f"<request>\n{request_text.strip()}\n</request>\n\n"
        f"<current_plan>\n{current}\n</current_plan>\n\n"
        f"<completed_tasks>\n{done}\n</completed_tasks>\n\n"
        f"<failure>\n{failure.strip()}\n</failure>"
    )
    return LLMRequest(
        kind="adapt",
        model="",
        system=plan_system_prompt(retrieved_tools(catalog_description, grounding), schema_name=ADAPT_SCHEMA_NAME),
        prompt=prompt,
        schema=copy.deepcopy(PLAN_SCHEMA),
        schema_name=ADAPT_SCHEMA_NAME,
        max_output_tokens=0,
    )


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 5] + " [...]"


def adapt_validator(
    catalog: Catalog, plan: Plan, kept: Iterable[str], limits: Limits | None = None
) -> Callable[[dict[str, Any]], Plan]:
    """A validator of re-planned work: the answer's tasks follow the ``kept`` (completed)
    tasks of ``plan``, use none of ``plan``'s other ids, and the whole plan passes
    :func:`planner.validation.validate_plan`. Returns the whole new plan."""
    keep = [t for t in plan.nodes if t.id in set(kept)]
    used = {t.id for t in plan.nodes}

    def validate(output: dict[str, Any]) -> Plan:
        remaining = validate_plan_output(output)
        reused = [
            f"$.nodes[{i}].id: id {t.id!r} is already used by the current plan; choose a new id"
            for i, t in enumerate(remaining.nodes)
            if t.id in used
        ]
        if reused:
            raise InvalidOutput(reused)
        whole = Plan(
            nodes=(*keep, *remaining.nodes),
            output=remaining.output or remaining.nodes[-1].id,
            rationale=remaining.rationale,
            confidence=remaining.confidence,
        )
        errors = failed(validate_plan(whole, catalog, limits or Limits()))
        if errors:
            raise InvalidOutput(_problem_in(c, len(keep)) for c in errors)
        return whole

    return validate


def _problem_in(check: Check, offset: int) -> str:
    """A check of the whole plan, with ``nodes[i]`` renumbered to the answer's own nodes."""
    path = check.path or ""
    if path.startswith("nodes[") and offset:
        index, _, rest = path[len("nodes[") :].partition("]")
        if index.isdigit() and int(index) >= offset:
            check = msgspec.structs.replace(check, path=f"nodes[{int(index) - offset}]{rest}")
    return _problem(check)
