"""Prompts, output schemas and validators of the agent's and the decomposer's consultations.

Four kinds of call (:data:`planner.providers.base.KINDS`), each a request builder, the JSON
Schema of the object expected back and a validator of the answer:

    kind        asked when                                        answer
    recover     a step's tool and its planned fallbacks failed     what to do: retry, alternative, skip, fail
    interpret   a tool's output does not match its schema or       the corrected output
                lacks a field the step expects
    decide      the planned tool failed, 2+ fallbacks remain       which fallback to try first
    decompose   a task the rules cannot decompose (no tool)        the task's steps

Like :mod:`planner.providers.prompts`, everything here is a pure function of its arguments:
no dates, no randomness, tools in name order, JSON written the same way every time, so the
same situation yields the same prompt (cache hits, replay checks). Requests carry
``model=""`` and ``max_output_tokens=0``: :meth:`actors.context.Context.infer` fills both
from the process's LLM settings.

Validators raise pydantic's ``ValidationError`` (shape) or
:class:`~planner.providers.structured.InvalidOutput` (meaning), every problem located by
JSON path in the answer (``$.steps[0].inputs: ...``), so the repair round can fix it.
Nothing is resolved here: inputs a model writes are literal values.
"""

from __future__ import annotations

import copy
import difflib
import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cadre.bus.effects import Grounded
from cadre.bus.plan import Check, ErrorInfo, StepIntent, Task
from cadre.planner.catalog import Catalog, Safety, ToolSpec
from cadre.planner.decompose import step_id
from cadre.planner.providers.base import LLMRequest
from cadre.planner.providers.prompts import grounding_text
from cadre.planner.providers.structured import InvalidOutput, problems_of
from cadre.planner.refs import find_refs
from cadre.planner.validation import Limits, failed, validate_steps

__all__ = [
    "DECIDE_SCHEMA_NAME",
    "DECOMPOSE_SCHEMA",
    "DECOMPOSE_SCHEMA_NAME",
    "INTERPRET_SCHEMA_NAME",
    "RECOVER_SCHEMA",
    "RECOVER_SCHEMA_NAME",
    "Choice",
    "FailedCall",
    "Recovery",
    "alternatives",
    "decide_request",
    "decide_validator",
    "decompose_request",
    "decompose_validator",
    "interpret_request",
    "interpret_validator",
    "missing_outputs",
    "recover_request",
    "recover_validator",
]

MAX_QUOTED_OUTPUT: Final = 8000
"""How much of a tool's output an ``interpret`` prompt quotes (the rest is elided)."""

MAX_QUOTED_UPSTREAM: Final = 1500
"""How much of each upstream task's output a ``decompose`` prompt quotes."""

_TOOL_KEYS: Final = ("name", "description", "safety", "input_schema", "output_schema")


# -- shared ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FailedCall:
    """One tool call of a step that failed: the tool, its error and whether the cause is transient."""

    tool: str
    error: ErrorInfo
    retryable: bool = False


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 6] + " [...]"


def _tool_lines(catalog: Catalog, names: Iterable[str]) -> str:
    """One JSON line per named tool of the catalog, in name order (unknown names left out)."""
    specs = sorted({catalog[n].name: catalog[n] for n in names if n in catalog}.values(), key=lambda s: s.name)
    lines = []
    for spec in specs:
        described = spec.describe()
        lines.append(_dumps({k: described[k] for k in _TOOL_KEYS}))
    return "\n".join(lines) or "(none)"


def _step_view(step: StepIntent, inputs: Mapping[str, Any]) -> str:
    """The step as a prompt shows it: what it is for and how it was planned, with its inputs."""
    return _dumps(
        {
            "id": step.id,
            "task_id": step.task_id,
            "operation": step.operation,
            "tool": step.tool,
            "fallback_tools": list(step.fallback_tools),
            "inputs": dict(inputs),
            "expected_outputs": list(step.expected_outputs),
        }
    )


def _failures(calls: Sequence[FailedCall]) -> str:
    lines = (f"- {c.tool}: {c.error.code}: {c.error.message}{' (transient)' if c.retryable else ''}" for c in calls)
    return "\n".join(lines) or "- (none)"


def _rooted(problems: Iterable[str], at: str) -> list[str]:
    """Problems located in a part of the answer (``$.x``), relocated under ``at`` (``$.inputs.x``)."""
    return [at + p[1:] if p.startswith("$") else f"{at}: {p}" for p in problems]


def _lacks(spec: ToolSpec, fields: Iterable[str]) -> list[str]:
    """The ``fields`` the tool's output model does not define (none when it allows extra fields)."""
    model = spec.output_model
    if model.model_config.get("extra") == "allow":
        return []
    return [f for f in fields if f not in model.model_fields]


def _input_problems(spec: ToolSpec, inputs: Mapping[str, Any], at: str) -> list[str]:
    """What is wrong with literal ``inputs`` for ``spec``: references (not resolved here) and
    the input model's errors, located under ``at``."""
    problems = [
        f"{ref.where}: {ref.text} is a reference, but inputs given here are used as written; write the value itself"
        for ref in find_refs(dict(inputs), root=at)
    ]
    try:
        spec.input_model.model_validate(dict(inputs))
    except ValidationError as exc:
        problems += _rooted(problems_of(exc), at)
    return problems


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


# -- recover ---------------------------------------------------------------------------------

RECOVER_SCHEMA_NAME: Final = "emit_recovery"

Action = Literal["retry", "alternative", "skip", "fail"]


class RecoveryOut(BaseModel):
    """The ``recover`` answer, as the model writes it."""

    model_config = ConfigDict(extra="forbid")

    action: Action = Field(
        description="retry: run a tool already tried again; alternative: run another catalog tool; "
        "skip: complete the step with an empty output; fail: give up on the step"
    )
    tool: str | None = Field(
        default=None, description="retry: a tool already tried (null: the step's tool); alternative: the tool to run"
    )
    inputs: dict[str, Any] | None = Field(
        default=None, description="the tool's inputs as literal values (retry: null keeps the step's inputs)"
    )
    reason: str = Field(min_length=1, description="one sentence on why this is the best thing to do")


RECOVER_SCHEMA: Final[dict[str, Any]] = RecoveryOut.model_json_schema()


@dataclass(frozen=True, slots=True)
class Recovery:
    """A validated recovery: ``tool`` is set for retry (the tool to re-run) and alternative;
    ``inputs`` is None when a retry keeps the step's inputs."""

    action: Action
    reason: str
    tool: str | None = None
    inputs: dict[str, Any] | None = None


_RECOVER_SYSTEM: Final = """\
You advise the agent of cadre, which runs a workflow's steps with tools. A step's tool, and \
every fallback tool planned for it, failed. Choose one recovery and return it as one JSON \
object matching the `{schema_name}` schema. Return nothing else.

Actions:
- "retry": run a tool that was already tried again, once. "tool" names it (null: the step's own \
tool); "inputs" are new inputs for it, or null to keep the step's inputs. Retry only when the \
failure looks transient or the new inputs fix it.
- "alternative": run another tool from the catalog below, once, with "inputs" matching its \
input_schema. Its output must serve the step's operation and contain the step's expected_outputs.
- "skip": complete the step without running anything, with an empty output. Only when the \
prompt says skipping is allowed, and the workflow's answer does not need this step.
- "fail": give up on the step (the workflow may then retry the task or fail). Choose it when \
nothing above is likely to work; never guess.

Rules:
- Inputs are literal values: "${{...}}" references are not resolved here.
- A side_effect tool changes something outside cadre: use one only when the step's operation \
asks for that change.
- "reason": one sentence a person can check.

Tools: the ones tried, then the alternatives, one JSON object per line (name, description, \
safety, input_schema, output_schema):
"""


def alternatives(catalog: Catalog, tried: Collection[str]) -> list[str]:
    """The tools a recovery may run instead: allowed, needing no approval, not tried yet (by name)."""
    return sorted(
        name
        for name, spec in catalog.items()
        if spec.safety is not Safety.PROHIBITED and not spec.requires_approval and name not in tried
    )


def recover_request(
    step: StepIntent,
    inputs: Mapping[str, Any],
    failures: Sequence[FailedCall],
    catalog: Catalog,
    *,
    skippable: bool,
) -> LLMRequest:
    """The ``recover`` call for ``step`` (run with the resolved ``inputs``) after ``failures``."""
    tried = [c.tool for c in failures]
    system = (
        _RECOVER_SYSTEM.format(schema_name=RECOVER_SCHEMA_NAME)
        + "Tried:\n"
        + _tool_lines(catalog, tried)
        + "\nAlternatives:\n"
        + _tool_lines(catalog, alternatives(catalog, tried))
        + "\n"
    )
    skip = (
        "Skipping this step is allowed: nothing else in the workflow uses its output."
        if skippable
        else 'Skipping this step is NOT allowed: the workflow needs its output. Do not answer "skip".'
    )
    prompt = (
        f"<step>\n{_step_view(step, inputs)}\n</step>\n\n"
        f"<failures>\n{_failures(failures)}\n</failures>\n\n"
        f"{skip}\nChoose the recovery."
    )
    return LLMRequest(
        kind="recover",
        model="",
        system=system,
        prompt=prompt,
        schema=copy.deepcopy(RECOVER_SCHEMA),
        schema_name=RECOVER_SCHEMA_NAME,
        max_output_tokens=0,
    )


def recover_validator(
    catalog: Catalog, step: StepIntent, tried: Sequence[str], *, skippable: bool
) -> Callable[[dict[str, Any]], Recovery]:
    """A validator of ``recover`` answers for ``step`` after the ``tried`` tools failed.

    ``retry`` re-runs a tried tool, with inputs valid for it (or null); ``alternative`` runs
    a catalog tool that was not tried and outputs the step's ``expected_outputs``, with valid
    inputs; ``skip`` only when ``skippable``; ``fail`` always. Whether the policy lets the tool
    run, and whether a person must approve it first, is the validator's verdict on the proposal
    the answer becomes (:mod:`planner.proposals`), not a repair round's.
    """

    def validate(output: dict[str, Any]) -> Recovery:
        answer = RecoveryOut.model_validate(output)
        match answer.action:
            case "fail":
                return Recovery("fail", answer.reason)
            case "skip":
                if not skippable:
                    raise InvalidOutput(
                        [
                            "$.action: skipping is not allowed for this step (the workflow needs its output); "
                            'answer "retry", "alternative" or "fail"'
                        ]
                    )
                return Recovery("skip", answer.reason)
            case "retry":
                return _retry(answer, catalog, step, tried)
            case "alternative":
                return _alternative(answer, catalog, step, tried)

    return validate


def _retry(answer: RecoveryOut, catalog: Catalog, step: StepIntent, tried: Sequence[str]) -> Recovery:
    tool = answer.tool or step.tool
    if tool not in tried:
        raise InvalidOutput(
            [
                f"$.tool: {tool!r} was not tried, and a retry runs a tool already tried "
                f'({", ".join(tried)}); to run another tool, answer "alternative"'
            ]
        )
    if answer.inputs is not None and tool in catalog:
        problems = _input_problems(catalog[tool], answer.inputs, "$.inputs")
        if problems:
            raise InvalidOutput(problems)
    return Recovery("retry", answer.reason, tool, answer.inputs)


def _alternative(answer: RecoveryOut, catalog: Catalog, step: StepIntent, tried: Sequence[str]) -> Recovery:
    allowed = alternatives(catalog, tried)
    if answer.tool is None:
        raise InvalidOutput([f"$.tool: an alternative needs a tool: one of {', '.join(allowed) or '(none)'}"])
    tool = answer.tool
    problems: list[str] = []
    if tool not in catalog:
        problems.append(
            f"$.tool: {tool!r} is not in the catalog; {_did_you_mean(tool, allowed)}use one of {', '.join(allowed)}"
        )
    elif tool in tried:
        problems.append(f'$.tool: {tool!r} was tried already; to run it again, answer "retry"')
    else:
        # The policy (prohibited tools, approval) is the validator's to apply: the answer becomes a
        # proposal it checks (planner.proposals), and its verdict is recorded.
        missing = _lacks(catalog[tool], step.expected_outputs)
        if missing:
            problems.append(
                f"$.tool: {tool!r} does not output {', '.join(missing)}, which the step must return; "
                "choose a tool whose output_schema has them"
            )
    if answer.inputs is None:
        problems.append("$.inputs: an alternative needs inputs matching its tool's input_schema")
    elif tool in catalog:
        problems += _input_problems(catalog[tool], answer.inputs, "$.inputs")
    if problems:
        raise InvalidOutput(problems)
    return Recovery("alternative", answer.reason, tool, answer.inputs)


# -- interpret -------------------------------------------------------------------------------

INTERPRET_SCHEMA_NAME: Final = "emit_tool_output"

_INTERPRET_SYSTEM: Final = """\
You check the output of a tool for the agent of cadre. The tool's output does not match its \
output_schema, or lacks a field the step needs. Return the output the tool should have \
returned, as one JSON object matching the `{schema_name}` schema (the tool's output_schema). \
Return nothing else.

Rules:
- Keep every value the tool returned. Only rename fields, convert types (the text "3" to the \
number 3) and restructure where the meaning is clear.
- Never invent data the output does not hold. If it does not hold what is needed, return the \
output unchanged: it will be refused and the tool treated as failed.
"""


def missing_outputs(output: Mapping[str, Any], expected: Iterable[str]) -> list[str]:
    """The ``expected`` fields absent from ``output`` (or null there), in ``expected``'s order."""
    return [name for name in expected if output.get(name) is None]


def _interpret_schema(spec: ToolSpec, expected: Sequence[str]) -> dict[str, Any]:
    """The tool's output schema, with the step's expected fields required too."""
    schema = copy.deepcopy(spec.output_model.model_json_schema())
    required = list(schema.get("required", []))
    required += [name for name in expected if name not in required]
    if required:
        schema["required"] = required
    return schema


def interpret_request(
    step: StepIntent, inputs: Mapping[str, Any], spec: ToolSpec, output: Any, problem: str
) -> LLMRequest:
    """The ``interpret`` call: ``spec``'s ``output`` for ``step`` (run with ``inputs``) has ``problem``."""
    quoted = _clip(_dumps(output), MAX_QUOTED_OUTPUT)
    described = spec.describe()
    tool = _dumps({k: described[k] for k in _TOOL_KEYS})
    prompt = (
        f"<tool>\n{tool}\n</tool>\n\n"
        f"<step>\n{_step_view(step, inputs)}\n</step>\n\n"
        f"<problem>\n{problem.strip()}\n</problem>\n\n"
        f"<output>\n{quoted}\n</output>\n\n"
        "Return the corrected output."
    )
    return LLMRequest(
        kind="interpret",
        model="",
        system=_INTERPRET_SYSTEM.format(schema_name=INTERPRET_SCHEMA_NAME),
        prompt=prompt,
        schema=_interpret_schema(spec, step.expected_outputs),
        schema_name=INTERPRET_SCHEMA_NAME,
        max_output_tokens=0,
    )


def interpret_validator(spec: ToolSpec, expected: Sequence[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A validator of ``interpret`` answers: valid for ``spec``'s output model, with every
    ``expected`` field present; returns the output as the tool would have (JSON-ready)."""

    def validate(output: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = spec.output_model.model_validate(output).model_dump(mode="json")
        missing = missing_outputs(data, expected)
        if missing:
            raise InvalidOutput(f"$.{name}: missing; the step expects this field" for name in missing)
        return data

    return validate


# -- decide ----------------------------------------------------------------------------------

DECIDE_SCHEMA_NAME: Final = "emit_choice"


class ChoiceOut(BaseModel):
    """The ``decide`` answer, as the model writes it."""

    model_config = ConfigDict(extra="forbid")

    choice: str = Field(description="one of the options, exactly as written")
    reason: str = Field(min_length=1, description="one sentence on why it is the best option")


@dataclass(frozen=True, slots=True)
class Choice:
    """A validated choice among the options."""

    choice: str
    reason: str


_DECIDE_SYSTEM: Final = """\
You advise the agent of cadre, which runs a workflow's steps with tools. The step's planned \
tool failed, and several fallback tools were planned for it. Choose the fallback to try first \
(the others follow in their planned order) and return one JSON object matching the \
`{schema_name}` schema. Return nothing else.

Prefer the tool most likely to succeed given the failure, and then the one with the fewest \
side effects. "choice" is one of the options, exactly as written.

The options, one JSON object per line (name, description, safety, input_schema, output_schema):
"""


def _decide_schema(options: Sequence[str]) -> dict[str, Any]:
    schema = ChoiceOut.model_json_schema()
    schema["properties"]["choice"]["enum"] = list(options)
    return schema


def decide_request(
    step: StepIntent, inputs: Mapping[str, Any], failure: FailedCall, options: Sequence[str], catalog: Catalog
) -> LLMRequest:
    """The ``decide`` call: which of ``options`` (fallback tools) to try first after ``failure``."""
    system = _DECIDE_SYSTEM.format(schema_name=DECIDE_SCHEMA_NAME) + _tool_lines(catalog, options) + "\n"
    prompt = (
        f"<step>\n{_step_view(step, inputs)}\n</step>\n\n"
        f"<failure>\n{_failures([failure])}\n</failure>\n\n"
        f"Options, in planned order: {', '.join(options)}. Which one first?"
    )
    return LLMRequest(
        kind="decide",
        model="",
        system=system,
        prompt=prompt,
        schema=_decide_schema(options),
        schema_name=DECIDE_SCHEMA_NAME,
        max_output_tokens=0,
    )


def decide_validator(options: Sequence[str]) -> Callable[[dict[str, Any]], Choice]:
    """A validator of ``decide`` answers: the choice is one of ``options``."""

    def validate(output: dict[str, Any]) -> Choice:
        answer = ChoiceOut.model_validate(output)
        if answer.choice not in options:
            hint = _did_you_mean(answer.choice, options)
            raise InvalidOutput(
                [f"$.choice: {answer.choice!r} is not an option; {hint}choose one of {', '.join(options)}"]
            )
        return Choice(answer.choice, answer.reason)

    return validate


# -- decompose -------------------------------------------------------------------------------

DECOMPOSE_SCHEMA_NAME: Final = "emit_steps"


class StepOut(BaseModel):
    """One step of a ``decompose`` answer."""

    model_config = ConfigDict(extra="forbid")

    tool: str = Field(description="the name of one tool from the catalog, exactly as written there")
    inputs: dict[str, Any] = Field(description="an object matching the tool's input_schema; may hold references")
    operation: str = Field(description="one sentence on what the step does")
    expected_outputs: list[str] = Field(
        default_factory=list,
        description="fields of the tool's output_schema that later steps or tasks use (empty: its required fields)",
    )
    fallback_tools: list[str] = Field(
        default_factory=list, description="tools to try, in order, when the tool fails; each takes the same inputs"
    )
    pre: list[str] = Field(
        default_factory=list,
        description="conditions in CEL over `inputs` that must hold before the tool runs, "
        "e.g. \"inputs.path.startsWith('reports/')\"",
    )
    post: list[str] = Field(
        default_factory=list,
        description="conditions in CEL over `inputs` and `output` the tool's output must meet, "
        'e.g. "size(output.rows) > 0" or "has(output.path)"',
    )


class StepsOut(BaseModel):
    """The ``decompose`` answer, as the model writes it."""

    model_config = ConfigDict(extra="forbid")

    steps: list[StepOut] = Field(min_length=1, description="the steps, in the order they run")


DECOMPOSE_SCHEMA: Final[dict[str, Any]] = StepsOut.model_json_schema()

_DECOMPOSE_SYSTEM: Final = """\
You are the decomposer of cadre, which runs a request as a workflow of tasks. The task below \
names no tool the rules can run. Turn it into steps, each one call of a tool from the catalog \
below, run in order by one agent, and return them as one JSON object matching the \
`{schema_name}` schema. Return nothing else.

Step format: "tool" (a catalog tool, exactly as named), "inputs" (matching its input_schema), \
"operation" (one sentence), "expected_outputs" (output fields used later; may be empty), \
"fallback_tools" (usually empty).

References: an input value that is exactly "${{id.field}}" stands for a field of an earlier \
output: "${{up.rows}}" is the "rows" field of the upstream task "up", and "${{<step id>.text}}" the \
"text" field of an earlier step of this task (step ids are given with the task). Only upstream \
tasks and earlier steps may be referenced.

Rules:
- Use the fewest steps that do the task; the last step's output is the task's output.
- Use only the tools in the catalog, and only the input fields their input_schema defines.
- A side_effect tool changes something outside cadre: use one only when the task asks for \
that change. A tool that requires approval pauses the workflow until a person approves it.

Tool catalog, one JSON object per line (name, description, safety, input_schema, output_schema):
"""


def decompose_request(
    task: Task,
    catalog: Catalog,
    *,
    attempt: int,
    upstream: Mapping[str, Any],
    reason: str = "",
    grounding: Grounded | None = None,
) -> LLMRequest:
    """The ``decompose`` call for ``task`` in ``attempt``; ``upstream`` maps each upstream
    task's id to its output (quoted up to :data:`MAX_QUOTED_UPSTREAM` characters), ``reason``
    says why the rules could not decompose it; ``grounding``: the passages of documentation
    retrieved for it, and the tools retrieved from a large catalog."""
    allowed = [n for n, s in catalog.items() if s.safety is not Safety.PROHIBITED]
    if grounding is not None and grounding.tools is not None:
        allowed = [n for n in allowed if n in set(grounding.tools)]
    system = _DECOMPOSE_SYSTEM.format(schema_name=DECOMPOSE_SCHEMA_NAME) + _tool_lines(catalog, allowed) + "\n"
    view = {
        "id": task.id,
        "description": task.description,
        "capabilities": list(task.capabilities),
        "tool": task.tool,
        "inputs": task.inputs,
        "depends_on": list(task.depends_on),
    }
    ids = ", ".join(f'step {i}: "{step_id(task.id, attempt=attempt, index=i)}"' for i in (1, 2, 3))
    outputs = (
        "\n".join(f"- {tid}: {_clip(_dumps(upstream[tid]), MAX_QUOTED_UPSTREAM)}" for tid in sorted(upstream))
        or "- (none)"
    )
    why = f"The rules could not decompose it: {reason.strip()}\n\n" if reason.strip() else ""
    prompt = (
        f"{grounding_text(grounding)}<task>\n{_dumps(view)}\n</task>\n\n"
        f"{why}Step ids, for references to earlier steps: {ids}, and so on.\n\n"
        f"<upstream_outputs>\n{outputs}\n</upstream_outputs>\n\n"
        "Decompose the task into steps."
    )
    return LLMRequest(
        kind="decompose",
        model="",
        system=system,
        prompt=prompt,
        schema=copy.deepcopy(DECOMPOSE_SCHEMA),
        schema_name=DECOMPOSE_SCHEMA_NAME,
        max_output_tokens=0,
    )


def _preconditions(task: Task, spec: ToolSpec) -> tuple[str, ...]:
    pre = [f"inputs validate against {spec.input_model.__name__}"]
    if task.depends_on:
        pre.insert(0, f"upstream tasks completed: {', '.join(task.depends_on)}")
    return tuple(pre)


def _step_intent(task: Task, out: StepOut, index: int, attempt: int, catalog: Catalog) -> StepIntent:
    """A step of the answer as a :class:`StepIntent`: the rules' id, the catalog's approval flag
    and declarative parts (the tool must be in the catalog)."""
    sid = step_id(task.id, attempt=attempt, index=index)
    spec = catalog[out.tool]
    required = tuple(n for n, f in spec.output_model.model_fields.items() if f.is_required())
    rollback = (
        f"{spec.name} changed something outside cadre (idempotency key {sid!r}); "
        "no automatic undo: review and revert its effect by hand if the workflow is abandoned"
        if spec.safety is Safety.SIDE_EFFECT
        else None
    )
    return StepIntent(
        id=sid,
        task_id=task.id,
        tool=spec.name,
        operation=out.operation,
        inputs=out.inputs,
        expected_outputs=tuple(out.expected_outputs) or required,
        preconditions=_preconditions(task, spec),
        postconditions=(f"output validates against {spec.output_model.__name__}",),
        rollback=rollback,
        fallback_tools=tuple(out.fallback_tools),
        requires_approval=any(catalog[n].requires_approval for n in (out.tool, *out.fallback_tools) if n in catalog),
        pre=(*task.pre, *out.pre),
        post=(*task.post, *out.post),
    )


def _check_problem(check: Check) -> str:
    path = f"$.{check.path}" if check.path else "$"
    fix = f" (fix: {check.fix})" if check.fix and check.fix not in check.message else ""
    return f"{path}: {check.message}{fix}"


def decompose_validator(
    task: Task,
    catalog: Catalog,
    *,
    attempt: int,
    upstream_ids: Collection[str],
    upstream_outputs: Mapping[str, Mapping[str, Any]] | None = None,
    limits: Limits | None = None,
) -> Callable[[dict[str, Any]], tuple[StepIntent, ...]]:
    """A validator of ``decompose`` answers: the steps of ``task`` (ids of ``attempt``) pass
    :func:`planner.validation.validate_steps` (references may reach ``upstream_ids``, resolved
    against ``upstream_outputs`` when given) and expect only fields their tools output."""

    def validate(output: dict[str, Any]) -> tuple[StepIntent, ...]:
        answer = StepsOut.model_validate(output)
        allowed = sorted(n for n, spec in catalog.items() if spec.safety is not Safety.PROHIBITED)
        problems = [
            f"$.steps[{i}].tool: {s.tool!r} is not in the catalog; "
            f"{_did_you_mean(s.tool, allowed)}use one of {', '.join(allowed)}"
            for i, s in enumerate(answer.steps)
            if s.tool not in catalog
        ]
        if problems:
            raise InvalidOutput(problems)
        steps = tuple(_step_intent(task, s, i + 1, attempt, catalog) for i, s in enumerate(answer.steps))
        checks = validate_steps(task, steps, catalog, upstream_outputs, limits or Limits(), upstream_ids=upstream_ids)
        problems = [_check_problem(c) for c in failed(checks)]
        for i, s in enumerate(answer.steps):
            for name in _lacks(catalog[s.tool], s.expected_outputs):
                j = s.expected_outputs.index(name)
                problems.append(f"$.steps[{i}].expected_outputs[{j}]: {s.tool!r} has no output field {name!r}")
        if problems:
            raise InvalidOutput(problems)
        return steps

    return validate
