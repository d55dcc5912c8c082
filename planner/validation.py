"""Plan and step checks: what the validator actor decides, as plain functions over plain data.

:func:`validate_plan` checks a whole plan before anything runs; :func:`validate_steps` checks
the steps one task was decomposed into, just before they run. Both return every check they
made, passed or not, as :class:`bus.plan.Check` values (name, severity, message, fix, path),
so a verdict can be recorded and audited in full; :func:`failed` and :func:`passed_all` sum
them up. A check that does not pass with severity ``"error"`` rejects the plan; ``"warning"``
checks that do not pass are notes for people (an approval pause, an unchosen tool) and never
reject anything.

Check names are stable (tests, audits and fix-up prompts use them):

    plan_not_empty  task_id_valid  task_ids_unique  dependency_known  no_self_dependency
    acyclic  plan_size  plan_depth  inputs_size  tool_named  tool_exists  tool_allowed
    approval_required  fallback_exists  fallback_allowed  fallback_inputs  inputs_valid
    reference_known  reference_upstream  reference_field  reference_resolves  reference_order
    output_known  steps_present  step_count  step_id_form  step_ids_unique  step_task
    confidence (only with ``Limits.reject_below`` set: :mod:`planner.confidence`)
    inputs_safe  reference_form (recorded only when they fail; see below)

Strict inputs. Inputs are validated as the JSON they are, in pydantic's strict mode: the
published schema as written, so ``"10"`` or ``true`` is not an int (the ToolBox validates the
same way: :func:`actors.tools.base.strict_inputs`).

Safety. A tool's rule (:mod:`planner.safety`: path confinement, read-only SQL, the URL
allow-list, template safety) is checked on the literal inputs at plan time and on the resolved
inputs at step time (:func:`check_step`, the one step check, also for callers outside this
module); a value that is still a reference is judged once resolved. ``inputs_safe`` and
``reference_form`` (a string that opens ``${`` but is no reference, such as ``"${top.rows"``)
are recorded when they fail: a verdict that passes lists the same checks as before they
existed, so the verdicts of earlier runs replay as they were.

References and input validation. A reference (``"${top.rows}"``) stands for a value that
does not exist yet, so it cannot be checked against the tool's input model as written, and
no placeholder fits every field type. The choice made here: validate the inputs as written
and *discard the model errors located at or below a reference* (pydantic reports each error
with its location, and :class:`planner.refs.Ref` carries the same location). Every other
field is still checked, required fields included (a reference is present, so the field is
not missing), and the referenced parts are checked later by :func:`validate_steps`, which
resolves the references against the upstream outputs first. At plan level the first path
segment of a reference is still checked against the upstream tool's *output* model
(``reference_field``), and the rest of its path against that model's JSON schema to the full
path (``${top.rows.first}`` is refused: ``rows`` is a list).

    CadreError
     └─ ValidationFailed              checks that rejected a plan or steps (code "validation_failed")
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import re
import typing
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from pydantic import BaseModel, ValidationError

from cadre.bus.errors import CadreError
from cadre.bus.plan import Check, Plan, Severity, StepIntent, Task
from cadre.planner import pools as agent_pools
from cadre.planner.catalog import Catalog, Safety, ToolSpec, json_schema
from cadre.planner.conditions import PRE_NAMES, problem
from cadre.planner.confidence import confidence_checks
from cadre.planner.refs import Loc, Ref, RefError, find_refs, format_location, lookup, resolve
from cadre.planner.safety import SafetyContext
from cadre.planner.scheduler import Upstream, depth, find_cycle

__all__ = [
    "TASK_ID",
    "Limits",
    "ValidationFailed",
    "check_step",
    "failed",
    "needs_approval",
    "passed_all",
    "validate_plan",
    "validate_steps",
    "warnings",
]

# Task ids end up in step ids (``<task>.s1``), references (``${task.field}``) and subjects,
# so they are tokens without dots.
TASK_ID = re.compile(r"[A-Za-z0-9_-]+")
_STEP_ID = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)+")
NO_DEPLOYMENT = SafetyContext()  # the rules without a deployment's facts (an HTTP URL's form only)


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits on plans and steps (a deployment may tighten them)."""

    max_tasks: int = 50
    max_depth: int = 20
    max_steps_per_task: int = 10
    max_inputs_bytes: int = 64_000  # of one task's or step's inputs, encoded as JSON
    reject_below: float | None = None  # a plan or task confidence below this rejects the plan
    model_side_effects_need_approval: bool = True  # a side-effect tool a model chose waits for a person
    max_child_depth: int = 3  # how deep child workflows nest (``workflow.run``; planner.children); 0: none


class ValidationFailed(CadreError):
    """A plan or a task's steps failed error checks; ``checks`` holds the failed ones."""

    code = "validation_failed"

    def __init__(self, what: str, checks: Iterable[Check]) -> None:
        errors = failed(checks)
        details = "; ".join(f"[{c.name} at {c.path or '$'}] {c.message} (fix: {c.fix})" for c in errors)
        super().__init__(f"{what} failed {len(errors)} check(s): {details}")
        self.checks = tuple(errors)


# -- summaries -------------------------------------------------------------------------------


def failed(checks: Iterable[Check]) -> list[Check]:
    """The checks that reject: severity ``"error"`` and not passed."""
    return [c for c in checks if c.severity == "error" and not c.passed]


def warnings(checks: Iterable[Check]) -> list[Check]:
    """The notes for people: severity ``"warning"`` and not passed."""
    return [c for c in checks if c.severity == "warning" and not c.passed]


def passed_all(checks: Iterable[Check]) -> bool:
    """Whether no check rejects (warnings do not count)."""
    # not failed(checks), without the list; a loop, which costs half what all() over a generator does
    for c in checks:  # noqa: SIM110
        if not c.passed and c.severity == "error":
            return False
    return True


def needs_approval(step: StepIntent, catalog: Catalog) -> bool:
    """Whether a person must approve ``step`` before it runs.

    True when the step says so, or its tool or one of its fallback tools requires approval
    in ``catalog``: a step is approved as a whole, whichever of its tools ends up running.
    """
    return step.requires_approval or any(
        catalog[name].requires_approval for name in (step.tool, *step.fallback_tools) if name in catalog
    )


# -- helpers ---------------------------------------------------------------------------------


def _ok(name: str, message: str, path: str | None, severity: Severity = "error") -> Check:
    return Check(name=name, passed=True, severity=severity, message=message, path=path)


def _fail(name: str, message: str, fix: str, path: str | None, severity: Severity = "error") -> Check:
    return Check(name=name, passed=False, severity=severity, message=message, fix=fix, path=path)


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names) or "(none)"


def _allowed(catalog: Catalog) -> list[str]:
    """The names of the tools that may run, sorted (the only ones worth suggesting)."""
    return list(catalog.allowed)


def _allowed_names(catalog: Catalog) -> str:
    return _quoted_names(catalog.allowed)


@functools.lru_cache(maxsize=64)
def _quoted_names(names: tuple[str, ...]) -> str:
    """:func:`_quoted` of a catalog's allowed tools, made once per catalog (every task check says it)."""
    return _quoted(names)


def _did_you_mean(word: str, candidates: Iterable[str], otherwise: str) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else otherwise


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _schema_hint(model: type[BaseModel]) -> str:
    """``{sql: str, max_rows: int (optional)}``: the fields a model takes, for fix suggestions."""
    fields = (
        f"{name}: {_type_name(field.annotation)}{'' if field.is_required() else ' (optional)'}"
        for name, field in model.model_fields.items()
    )
    return "{" + ", ".join(fields) + "}"


def _under(loc: Loc, prefixes: Collection[Loc]) -> bool:
    return any(loc[: len(p)] == p for p in prefixes)


def _input_errors(model: type[BaseModel], inputs: Mapping[str, Any], skip: Collection[Loc]) -> list[str]:
    """Model errors of ``inputs``, leaving out those at or below a location in ``skip``."""
    try:
        raw = json.dumps(inputs, allow_nan=False)
    except (TypeError, ValueError):
        return []  # not JSON: inputs_size says so
    found = _model_errors(model, raw) if len(raw) <= _CACHED_INPUTS_CHARS else _model_errors.__wrapped__(model, raw)
    return [f"{format_location('inputs', loc)}: {said}" for loc, said in found if not _under(loc, skip)]


_CACHED_INPUTS_CHARS = 4096  # larger inputs are validated each time (the cache holds at most 4 096 of them)


@functools.lru_cache(maxsize=4096)
def _model_errors(model: type[BaseModel], raw: str) -> tuple[tuple[Loc, str], ...]:
    """Strict validation of the JSON text ``raw`` against ``model``: each error's location and what
    it says (its message and, unless missing, the value). Pure, so made once per (model, inputs) in
    a process: a step's inputs are checked when its steps are proposed and again once resolved,
    live and under replay (a tool's input model must not depend on anything but its input, or
    replay would not reproduce its verdicts either)."""
    try:
        model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        out: list[tuple[Loc, str]] = []
        for error in exc.errors():
            got = "" if error["type"] == "missing" else f" (got {error['input']!r:.60})"
            out.append((tuple(error["loc"]), f"{error['msg']}{got}"))
        return tuple(out)
    return ()


def _check_inputs(
    name: str, who: str, spec: ToolSpec, inputs: Mapping[str, Any], skip: Collection[Loc], path: str, severity: Severity
) -> Check:
    errors = _input_errors(spec.input_model, inputs, skip)
    model = spec.input_model.__name__
    if not errors:
        return _ok(name, f"{who}: inputs match {model}, the input model of {spec.name!r}", path, severity)
    return _fail(
        name,
        f"{who}: inputs do not match {model}, the input model of {spec.name!r}: {'; '.join(errors)}",
        f"give inputs of the form {_schema_hint(spec.input_model)}",
        path,
        severity,
    )


def _check_inputs_size(who: str, inputs: Mapping[str, Any], limits: Limits, path: str) -> Check:
    try:
        size = len(msgspec.json.encode(inputs))
    except (TypeError, msgspec.EncodeError) as exc:
        return _fail("inputs_size", f"{who}: inputs are not JSON ({exc})", "use only JSON values in inputs", path)
    if size > limits.max_inputs_bytes:
        return _fail(
            "inputs_size",
            f"{who}: inputs take {size} bytes as JSON; the limit is {limits.max_inputs_bytes}",
            "pass large data by reference to an upstream output (${task.field}) or through a file",
            path,
        )
    return _ok("inputs_size", f"{who}: inputs take {size} bytes as JSON", path)


def _check_tool(
    who: str, tool: str, catalog: Catalog, path: str, prohibited_fix: str
) -> tuple[list[Check], ToolSpec | None]:
    """``tool_exists`` and ``tool_allowed``; the spec when the tool exists."""
    if tool not in catalog:
        fix = _did_you_mean(tool, _allowed(catalog), f"use one of {_allowed_names(catalog)}")
        return [_fail("tool_exists", f"{who} uses tool {tool!r}, which is not in the catalog", fix, path)], None
    spec = catalog[tool]
    checks = [_ok("tool_exists", f"{who} uses tool {tool!r}, which is in the catalog", path)]
    if spec.safety is Safety.PROHIBITED:
        checks.append(_fail("tool_allowed", f"{who} uses tool {tool!r}, which is prohibited", prohibited_fix, path))
    else:
        checks.append(_ok("tool_allowed", f"{who} uses tool {tool!r}, which is allowed ({spec.safety.value})", path))
    return checks, spec


def _check_fallbacks(
    who: str, fallbacks: Sequence[str], catalog: Catalog, path: str
) -> tuple[list[Check], list[tuple[int, ToolSpec]]]:
    """``fallback_exists`` and ``fallback_allowed``; the usable fallbacks with their index."""
    checks: list[Check] = []
    usable: list[tuple[int, ToolSpec]] = []
    for k, name in enumerate(fallbacks):
        where = f"{path}[{k}]"
        said = f"{who} falls back to tool {name!r}"
        if name not in catalog:
            otherwise = f"remove it from fallback_tools, or use one of {_allowed_names(catalog)}"
            fix = _did_you_mean(name, _allowed(catalog), otherwise)
            checks.append(_fail("fallback_exists", f"{said}, which is not in the catalog", fix, where))
            continue
        checks.append(_ok("fallback_exists", f"{said}, which is in the catalog", where))
        if catalog[name].safety is Safety.PROHIBITED:
            fix = "remove it from fallback_tools"
            checks.append(_fail("fallback_allowed", f"{said}, which is prohibited", fix, where))
        else:
            checks.append(_ok("fallback_allowed", f"{said}, which is allowed", where))
            usable.append((k, catalog[name]))
    return checks, usable


def condition_checks(who: str, pre: Sequence[str], post: Sequence[str], path: str) -> list[Check]:
    """``condition_parses`` for each checked condition (``planner.conditions``): a precondition
    names ``inputs`` only, a postcondition ``inputs`` and ``output``."""
    checks: list[Check] = []
    for kind, texts in (("pre", pre), ("post", post)):
        for k, text in enumerate(texts):
            where = f"{path}.{kind}[{k}]"
            found = problem(text, PRE_NAMES) if kind == "pre" else problem(text)
            if found is None:
                checks.append(_ok("condition_parses", f"{who}: {kind}condition {text!r} parses", where))
            else:
                fix = "write a CEL expression over inputs (pre) or inputs and output (post), e.g. size(output.rows) > 0"
                checks.append(_fail("condition_parses", f"{who}: {found}", fix, where))
    return checks


def _approval_check(who: str, tool: str, path: str) -> Check:
    return _fail(
        "approval_required",
        f"{who} uses tool {tool!r}, which requires approval: the workflow will pause for approval before it runs",
        "approve it when asked (cadre approve), or choose a tool that needs no approval",
        path,
        "warning",
    )


# -- plans -----------------------------------------------------------------------------------


def validate_plan(
    plan: Plan, catalog: Catalog, limits: Limits = Limits(), *, safety: SafetyContext = NO_DEPLOYMENT
) -> list[Check]:
    """Every check of ``plan`` against ``catalog`` and ``limits``, passed and failed.

    Structure (ids, dependencies, acyclic, size and depth), each task's tool, fallbacks and
    inputs (see the module docstring for references), references between tasks (to known,
    upstream tasks and existing output fields), and ``output``.
    """
    if not plan.nodes:
        return [_fail("plan_not_empty", "the plan has no tasks", 'add at least one task to "nodes"', "nodes")]
    checks = [_ok("plan_not_empty", f"the plan has {len(plan.nodes)} task(s)", "nodes")]
    checks += _check_ids(plan)
    checks += _check_dependencies(plan)
    checks += _check_shape(plan, limits)
    for index, task in enumerate(plan.nodes):
        checks += _check_task(index, task, catalog, limits, safety)
        checks += condition_checks(f"task {task.id!r}", task.pre, task.post, f"nodes[{index}]")
    checks += _check_plan_references(plan, catalog)
    checks += _check_output(plan)
    checks += confidence_checks(plan, limits.reject_below)
    return checks


def _check_ids(plan: Plan) -> list[Check]:
    checks: list[Check] = []
    first_at: dict[str, int] = {}
    for i, task in enumerate(plan.nodes):
        path = f"nodes[{i}].id"
        if TASK_ID.fullmatch(task.id):
            checks.append(_ok("task_id_valid", f"task id {task.id!r} is a valid id", path))
        else:
            checks.append(
                _fail(
                    "task_id_valid",
                    f"task id {task.id!r} at nodes[{i}] is not a valid id",
                    "use only letters, digits, '_' and '-' (ids appear in step ids, references and subjects)",
                    path,
                )
            )
        if task.id in first_at:
            checks.append(
                _fail(
                    "task_ids_unique",
                    f"task id {task.id!r} is used by nodes[{first_at[task.id]}] and nodes[{i}]",
                    "give each task its own id, and update the depends_on lists and references that name it",
                    path,
                )
            )
        else:
            first_at[task.id] = i
    if len(first_at) == len(plan.nodes):
        checks.append(_ok("task_ids_unique", f"the {len(first_at)} task ids are distinct", "nodes"))
    return checks


def _check_dependencies(plan: Plan) -> list[Check]:
    checks: list[Check] = []
    ids = [t.id for t in plan.nodes]
    known = set(ids)
    for i, task in enumerate(plan.nodes):
        bad = False
        for j, dep in enumerate(task.depends_on):
            path = f"nodes[{i}].depends_on[{j}]"
            if dep == task.id:
                bad = True
                fix = f"remove {dep!r} from its depends_on"
                checks.append(_fail("no_self_dependency", f"task {task.id!r} depends on itself", fix, path))
            elif dep not in known:
                bad = True
                fix = _did_you_mean(dep, ids, f"remove it from depends_on, or add a task {dep!r}")
                said = f"task {task.id!r} depends on {dep!r}, which is not a task of this plan"
                checks.append(_fail("dependency_known", said, fix, path))
        if task.depends_on and not bad:
            checks.append(
                _ok(
                    "dependency_known",
                    f"task {task.id!r} depends on known tasks: {', '.join(task.depends_on)}",
                    f"nodes[{i}].depends_on",
                )
            )
    return checks


def _without_self_dependencies(plan: Plan) -> Plan:
    # Self-dependencies are reported by no_self_dependency; dropping them here keeps them from
    # also being reported as one-task cycles and lets the depth be measured.
    nodes = tuple(
        msgspec.structs.replace(t, depends_on=tuple(d for d in t.depends_on if d != t.id)) for t in plan.nodes
    )
    return msgspec.structs.replace(plan, nodes=nodes)


def _check_shape(plan: Plan, limits: Limits) -> list[Check]:
    checks: list[Check] = []
    count = len(plan.nodes)
    if count > limits.max_tasks:
        checks.append(
            _fail(
                "plan_size",
                f"the plan has {count} tasks; the limit is {limits.max_tasks}",
                "merge small tasks, or split the request into several workflows",
                "nodes",
            )
        )
    else:
        checks.append(_ok("plan_size", f"the plan has {count} tasks (limit {limits.max_tasks})", "nodes"))
    graph = _without_self_dependencies(plan)
    cycle = find_cycle(graph)
    if cycle is not None:
        start = next(i for i, t in enumerate(plan.nodes) if t.id == cycle[0])
        edge = plan.nodes[start].depends_on.index(cycle[1])
        edges = ", ".join(f"{a!r} on {b!r}" for a, b in itertools.pairwise(cycle))
        checks.append(
            _fail(
                "acyclic",
                f"the dependencies form a cycle: {' -> '.join(cycle)} (each task depends on the next)",
                f"remove one of these dependencies: {edges}",
                f"nodes[{start}].depends_on[{edge}]",
            )
        )
        return checks  # the depth of a cyclic graph is not defined
    checks.append(_ok("acyclic", "the dependencies form a DAG", "nodes"))
    levels = depth(graph)
    if levels > limits.max_depth:
        checks.append(
            _fail(
                "plan_depth",
                f"the longest dependency chain has {levels} tasks; the limit is {limits.max_depth}",
                "let independent tasks run side by side instead of in a chain, or split the workflow",
                "nodes",
            )
        )
    else:
        said = f"the longest dependency chain has {levels} tasks (limit {limits.max_depth})"
        checks.append(_ok("plan_depth", said, "nodes"))
    return checks


def _check_task(index: int, task: Task, catalog: Catalog, limits: Limits, safety: SafetyContext) -> list[Check]:
    who = f"task {task.id!r}"
    prefix = f"nodes[{index}]"
    checks = [_check_inputs_size(who, task.inputs, limits, f"{prefix}.inputs")]
    add = f'add "tool": one of {_allowed_names(catalog)}'
    if task.tool is None:
        if task.capabilities:
            checks.append(
                _fail(
                    "tool_named",
                    f"{who} names no tool, only capabilities ({', '.join(task.capabilities)}); "
                    "an LLM decomposer must choose one, the rule-based decomposer cannot",
                    add,
                    f"{prefix}.tool",
                    "warning",
                )
            )
        else:
            checks.append(_fail("tool_named", f"{who} names no tool; {add}", add, f"{prefix}.tool"))
    else:
        checks.append(_ok("tool_named", f"{who} names tool {task.tool!r}", f"{prefix}.tool"))
        found, spec = _check_tool(
            who, task.tool, catalog, f"{prefix}.tool", f"choose another tool: {_allowed_names(catalog)}"
        )
        checks += found
        if spec is not None and spec.safety is not Safety.PROHIBITED:
            if spec.requires_approval:
                checks.append(_approval_check(who, spec.name, f"{prefix}.tool"))
            skip = [ref.loc for ref in find_refs(task.inputs)]
            checks.append(_check_inputs("inputs_valid", who, spec, task.inputs, skip, f"{prefix}.inputs", "error"))
            checks += _safety_failures(who, spec, task.inputs, safety, prefix)
    checks += _reference_form_failures(who, task.inputs, prefix)
    checks += _check_fallbacks(who, task.fallback_tools, catalog, f"{prefix}.fallback_tools")[0]
    return checks


def _safety_failures(
    who: str, spec: ToolSpec, inputs: Mapping[str, Any], safety: SafetyContext, prefix: str
) -> list[Check]:
    """``inputs_safe`` failures: what the tool's rule refuses in ``inputs`` (references are judged once resolved)."""
    if spec.rule is None:
        return []
    return [
        _fail(
            "inputs_safe",
            f"{who}: {spec.name} refuses {v.where} ({v.code}): {v.message}",
            v.fix,
            f"{prefix}.{v.where}",
        )
        for v in spec.rule(inputs, safety)
    ]


_UNCLOSED = re.compile(r"\$\{[A-Za-z0-9_.-]*$")
_FULL_REF = re.compile(r"\$\{[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\}")  # planner.refs' form of a reference


def _reference_form_failures(who: str, inputs: Mapping[str, Any], prefix: str) -> list[Check]:
    """``reference_form`` failures: strings that open ``${`` like a reference but are none (``"${top.rows"``),
    which would otherwise pass on as plain text."""
    found: list[Check] = []
    for loc, value in _strings(inputs, ()):
        if "${" not in value or _FULL_REF.fullmatch(value):
            continue
        if value.lstrip().startswith("${") or _UNCLOSED.search(value):
            where = format_location("inputs", loc)
            found.append(
                _fail(
                    "reference_form",
                    f"{who}: {where} opens a reference with '${{' but is not one: {value!r:.80}",
                    "write a reference as exactly ${task_id.field} (closed with '}'), the whole value and nothing else",
                    f"{prefix}.{where}",
                )
            )
    return found


def _strings(value: Any, loc: Loc) -> list[tuple[Loc, str]]:
    if isinstance(value, str):
        return [(loc, value)]
    if isinstance(value, Mapping):
        return [pair for k, v in value.items() for pair in _strings(v, (*loc, str(k)))]
    if isinstance(value, list | tuple):
        return [pair for i, v in enumerate(value) for pair in _strings(v, (*loc, i))]
    return []


def check_step(
    tool: str,
    inputs: Mapping[str, Any],
    catalog: Catalog,
    *,
    safety: SafetyContext = NO_DEPLOYMENT,
    limits: Limits = Limits(),
    pool: str | None = None,
    pools: agent_pools.Pools | None = None,
    who: str = "step",
    path: str = "step",
    planned: Mapping[str, Any] | None = None,
) -> list[Check]:
    """The validator's check of one step about to run: ``tool`` with its fully resolved ``inputs``.

    ``planned``: the inputs as the step was planned, before its references were resolved. Given,
    the reference checks read those (a reference or a stray ``${`` is the plan's), not the resolved
    values: an upstream output is data, and a value of it that reads ``${top.rows`` or even
    ``${a.b}`` is text to pass on, not an unclosed or unresolved reference.

    ``catalog`` carries the deployment's policy (prohibited tools); ``pool`` the agent pool the
    step runs in, checked against the deployment's ``pools`` (``agent_pool``); ``safety`` the
    deployment's context of the rules. Checks: the tool exists and is allowed (``tool_exists``,
    ``tool_allowed``, ``agent_pool``), the inputs' size, that no reference is left
    (``reference_resolves``, ``reference_form``), strict schema validation (``inputs_valid``) and
    the tool's safety rule (``inputs_safe``). The verdict is :func:`passed_all` of the result; a
    proposal (a model's alternative tool or changed inputs) is checked the same way.
    """
    checks: list[Check] = [_check_inputs_size(who, inputs, limits, f"{path}.inputs")]
    found, spec = _check_tool(who, tool, catalog, f"{path}.tool", "choose another tool")
    checks += found
    if pool is not None and (why := agent_pools.problem(pool, [tool], pools)) is not None:
        checks.append(
            _fail("agent_pool", f"{who}: {why}", "choose a tool of the pool, or run it in another", f"{path}.tool")
        )
    left = find_refs(inputs) if planned is None else []  # planned: resolved already, what is left is data
    for ref in left:
        checks.append(
            _fail(
                "reference_resolves",
                f"{who}: {ref.text} at {ref.where} is not resolved",
                "resolve references against the upstream outputs before checking a step",
                f"{path}.{ref.where}",
            )
        )
    checks += _reference_form_failures(who, inputs if planned is None else planned, path)
    if spec is not None and spec.safety is not Safety.PROHIBITED:
        checks.append(
            _check_inputs("inputs_valid", who, spec, inputs, [r.loc for r in left], f"{path}.inputs", "error")
        )
        checks += _safety_failures(who, spec, inputs, safety, path)
    return checks


def _check_plan_references(plan: Plan, catalog: Catalog) -> list[Check]:
    checks: list[Check] = []
    by_id: dict[str, Task] = {}
    for task in plan.nodes:
        by_id.setdefault(task.id, task)
    upstream = Upstream.of_plan(plan)
    for index, task in enumerate(plan.nodes):
        who = f"task {task.id!r}"
        direct = set(task.depends_on)
        above: set[str] | None = None  # made only for a reference that is not to a direct dependency
        for ref in find_refs(task.inputs):
            path = f"nodes[{index}].{ref.where}"
            said = f"{who} references {ref.text} at {ref.where}"
            if ref.task_id not in by_id:
                above = above if above is not None else _above(task, by_id, upstream)
                otherwise = f"reference one of the upstream tasks: {_quoted(sorted(above))}"
                fix = _did_you_mean(ref.task_id, by_id, otherwise)
                checks.append(_fail("reference_known", f"{said}, but the plan has no task {ref.task_id!r}", fix, path))
            elif ref.task_id == task.id:
                checks.append(
                    _fail(
                        "reference_upstream",
                        f"{said}, its own output, which exists only once it has run",
                        "reference an upstream task's output instead",
                        path,
                    )
                )
            elif ref.task_id not in direct and ref.task_id not in (
                above := above if above is not None else _above(task, by_id, upstream)
            ):
                checks.append(
                    _fail(
                        "reference_upstream",
                        f"{said}, but {ref.task_id!r} is not upstream of it, so its output may not exist yet",
                        f"add {ref.task_id!r} to depends_on",
                        path,
                    )
                )
            else:
                checks.append(_ok("reference_upstream", f"{said}, an upstream task", path))
                checks += _check_reference_field(said, ref, by_id[ref.task_id], catalog, path)
    return checks


def _above(task: Task, by_id: Mapping[str, Task], upstream: Upstream) -> set[str]:
    """The tasks upstream of ``task``, through its own depends_on (so that a duplicate id gets its own answer)."""
    above = {dep for dep in task.depends_on if dep in by_id}
    for dep in list(above):
        above |= upstream.of(dep)
    return above


def _check_reference_field(said: str, ref: Ref, target: Task, catalog: Catalog, path: str) -> list[Check]:
    """The first path segment of ``ref`` against the output model of the task it points at."""
    if not ref.path or target.tool is None or target.tool not in catalog:
        return []  # nothing to check (a whole output), or the target's tool check already failed
    model = catalog[target.tool].output_model
    field = ref.path[0]
    if field in model.model_fields or model.model_config.get("extra") == "allow":
        checks = [_ok("reference_field", f"{said}; {target.tool!r} outputs {field!r}", path)]
        problem = _output_path_problem(model, ref.path)
        if problem is not None:  # recorded when it fails only (module docstring)
            checks.append(
                _fail(
                    "reference_field",
                    f"{said}, but the output of task {target.id!r} (tool {target.tool!r}) has no such path: {problem}",
                    f"follow the output schema of {target.tool!r} (`cadre schema {target.tool}`), "
                    "or reference a shorter path",
                    path,
                )
            )
        return checks
    fields = list(model.model_fields)
    return [
        _fail(
            "reference_field",
            f"{said}, but task {target.id!r} (tool {target.tool!r}) has no output field {field!r}; "
            f"it has: {', '.join(fields)}",
            _did_you_mean(field, fields, f"use one of its fields, or reference the whole output as ${{{target.id}}}"),
            path,
        )
    ]


@functools.lru_cache(maxsize=1024)
def _output_path_problem(model: type[BaseModel], path: tuple[str, ...]) -> str | None:
    """:func:`schema_path_problem` of an output model, once per (model, path): plans repeat references."""
    return schema_path_problem(json_schema(model), path)


def _deref(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        node = defs.get(str(node["$ref"]).rsplit("/", 1)[-1], {})
    return node


def schema_path_problem(schema: Mapping[str, Any], path: Sequence[str]) -> str | None:
    """Why ``path`` (reference segments) leads nowhere in the JSON ``schema`` of an output, or None.

    Objects need the named property (or admit any: ``additionalProperties``), lists a numeric
    index, a union any branch that fits; a schema that says nothing (any JSON) admits the rest.
    """
    return _schema_walk(schema, schema.get("$defs", {}), list(path), "")


def _schema_walk(node: Mapping[str, Any], defs: Mapping[str, Any], path: list[str], walked: str) -> str | None:
    for i, segment in enumerate(path):
        node = _deref(node, defs)
        branches = node.get("anyOf") or node.get("oneOf")
        if branches:
            problems = [_schema_walk(b, defs, path[i:], walked) for b in branches]
            return None if any(p is None for p in problems) else problems[0]
        here = walked or "the output"
        kind = node.get("type")
        if kind == "object" or "properties" in node:
            props: Mapping[str, Any] = node.get("properties", {})
            extra = node.get("additionalProperties")
            if segment in props:
                node = props[segment]
            elif isinstance(extra, Mapping):
                node = extra
            elif extra is True or ("properties" not in node and extra is None):
                return None
            else:
                return f"{here} has no field {segment!r} (it has: {', '.join(props) or 'no fields'})"
        elif kind == "array":
            if not segment.isdigit():
                return f"{here} is a list, and {segment!r} is not an index"
            prefix_items = node.get("prefixItems")
            if isinstance(prefix_items, list) and int(segment) < len(prefix_items):
                node = prefix_items[int(segment)]
            else:
                node = node.get("items", {})
        elif kind in ("string", "integer", "number", "boolean", "null"):
            return f"{here} is a {kind}, which has no field {segment!r}"
        else:
            return None  # any JSON value: nothing to check further
        walked = f"{walked}.{segment}" if walked else segment
    return None


def _check_output(plan: Plan) -> list[Check]:
    if plan.output is None:
        return []
    ids = [t.id for t in plan.nodes]
    if plan.output in ids:
        return [_ok("output_known", f'"output" names task {plan.output!r}', "output")]
    fix = _did_you_mean(plan.output, ids, f"set it to one of {_quoted(ids)}, or leave it out")
    return [_fail("output_known", f'"output" names {plan.output!r}, which is not a task of this plan', fix, "output")]


# -- steps -----------------------------------------------------------------------------------


def validate_steps(
    task: Task,
    steps: Sequence[StepIntent],
    catalog: Catalog,
    upstream_outputs: Mapping[str, Mapping[str, Any]] | None,
    limits: Limits = Limits(),
    *,
    upstream_ids: Collection[str] | None = None,
    safety: SafetyContext = NO_DEPLOYMENT,
) -> list[Check]:
    """Every check of the ``steps`` that ``task`` was decomposed into, passed and failed.

    With ``upstream_outputs`` (task id -> output) the references to other tasks are resolved
    first and the inputs validated with the resolved values; a reference that does not
    resolve is a ``reference_resolves`` error. Without it, references must point at
    ``upstream_ids`` (default: ``task.depends_on``; pass :func:`planner.scheduler.upstream`
    to allow transitive ones). Either way a reference to the task itself must name an
    *earlier* step (``${top.s1.rows}``); such references stay unresolved here.
    """
    if not steps:
        return [
            _fail(
                "steps_present",
                f"task {task.id!r} was decomposed into no steps",
                "decompose it into at least one tool step",
                "steps",
            )
        ]
    checks = [_ok("steps_present", f"task {task.id!r} has {len(steps)} step(s)", "steps")]
    if len(steps) > limits.max_steps_per_task:
        checks.append(
            _fail(
                "step_count",
                f"task {task.id!r} has {len(steps)} steps; the limit is {limits.max_steps_per_task}",
                "split the task into several tasks in the plan",
                "steps",
            )
        )
    else:
        said = f"task {task.id!r} has {len(steps)} steps (limit {limits.max_steps_per_task})"
        checks.append(_ok("step_count", said, "steps"))
    ids = [s.id for s in steps]
    seen: dict[str, int] = {}
    for i, step in enumerate(steps):
        if step.id in seen:
            checks.append(
                _fail(
                    "step_ids_unique",
                    f"step id {step.id!r} is used by steps[{seen[step.id]}] and steps[{i}]",
                    "give each step its own id",
                    f"steps[{i}].id",
                )
            )
        else:
            seen[step.id] = i
    if len(seen) == len(steps):
        checks.append(_ok("step_ids_unique", f"the {len(steps)} step ids are distinct", "steps"))
    for i, step in enumerate(steps):
        checks += _check_step(i, step, task, ids, catalog, upstream_outputs, limits, upstream_ids, safety)
        checks += condition_checks(f"step {step.id!r}", step.pre, step.post, f"steps[{i}]")
    return checks


def _step_target(ref: Ref, step_ids: Sequence[str]) -> str | None:
    """The step a reference to the task itself points at: the longest step id its segments start with."""
    parts = (ref.task_id, *ref.path)
    best: str | None = None
    for sid in step_ids:
        segments = tuple(sid.split("."))
        if parts[: len(segments)] == segments and (best is None or len(segments) > best.count(".") + 1):
            best = sid
    return best


def _check_step(
    index: int,
    step: StepIntent,
    task: Task,
    step_ids: Sequence[str],
    catalog: Catalog,
    upstream_outputs: Mapping[str, Mapping[str, Any]] | None,
    limits: Limits,
    upstream_ids: Collection[str] | None,
    safety: SafetyContext,
) -> list[Check]:
    who = f"step {step.id!r}"
    prefix = f"steps[{index}]"
    checks: list[Check] = []
    if _STEP_ID.fullmatch(step.id) and step.id.startswith(f"{task.id}."):
        checks.append(_ok("step_id_form", f"{who} is named after its task", f"{prefix}.id"))
    else:
        checks.append(
            _fail(
                "step_id_form",
                f"{who} is not of the form '{task.id}.<step>'",
                f"name it like '{task.id}.s{index + 1}' (task id, a dot, then letters, digits, '_' or '-')",
                f"{prefix}.id",
            )
        )
    if step.task_id == task.id:
        checks.append(_ok("step_task", f"{who} belongs to task {task.id!r}", f"{prefix}.task_id"))
    else:
        checks.append(
            _fail(
                "step_task",
                f"{who} belongs to task {step.task_id!r}, not {task.id!r}",
                f"set its task_id to {task.id!r}",
                f"{prefix}.task_id",
            )
        )
    checks.append(_check_inputs_size(who, step.inputs, limits, f"{prefix}.inputs"))
    found, spec = _check_tool(who, step.tool, catalog, f"{prefix}.tool", "remove the step or choose another tool")
    checks += found
    if needs_approval(step, catalog):
        checks.append(_approval_check(who, step.tool, f"{prefix}.tool"))

    # References: to earlier steps of this task (left as they are), or to upstream tasks.
    refs = find_refs(step.inputs)
    own = [r for r in refs if r.task_id == task.id]
    resolvable = True
    for ref in own:
        path = f"{prefix}.{ref.where}"
        said = f"{who} references {ref.text} at {ref.where}"
        target = _step_target(ref, step_ids)
        if target is None:
            checks.append(
                _fail(
                    "reference_known",
                    f"{said}, which names no step of task {task.id!r} (its steps: {', '.join(step_ids)})",
                    "reference an earlier step as ${<step id>.<field>}, or an upstream task",
                    path,
                )
            )
        elif step_ids.index(target) >= index:
            whose = "itself" if target == step.id else f"the later step {target!r}"
            checks.append(
                _fail("reference_order", f"{said}, the output of {whose}", "reference only earlier steps", path)
            )
        else:
            checks.append(_ok("reference_order", f"{said}, an earlier step", path))
    for ref in (r for r in refs if r.task_id != task.id):
        path = f"{prefix}.{ref.where}"
        said = f"{who} references {ref.text} at {ref.where}"
        if upstream_outputs is not None:
            try:
                lookup(ref, upstream_outputs)
            except RefError as exc:
                resolvable = False
                checks.append(_fail("reference_resolves", f"{who}: {exc.message}", exc.fix, path))
            else:
                checks.append(_ok("reference_resolves", f"{said}, which resolves", path))
        else:
            allowed = task.depends_on if upstream_ids is None else upstream_ids
            if ref.task_id in allowed:
                checks.append(_ok("reference_upstream", f"{said}, an upstream task", path))
            else:
                checks.append(
                    _fail(
                        "reference_upstream",
                        f"{said}, but {ref.task_id!r} is not upstream of task {task.id!r}",
                        f"add {ref.task_id!r} to the depends_on of task {task.id!r}",
                        path,
                    )
                )

    # Inputs: resolved when the upstream outputs are known and every reference to them resolves;
    # otherwise as written, with the model errors under references left out (module docstring).
    if upstream_outputs is not None and resolvable:
        inputs: Mapping[str, Any] = resolve(step.inputs, upstream_outputs, leave={task.id})
        skip = [r.loc for r in own]
    else:
        inputs, skip = step.inputs, [r.loc for r in refs]
    if spec is not None and spec.safety is not Safety.PROHIBITED:
        checks.append(_check_inputs("inputs_valid", who, spec, inputs, skip, f"{prefix}.inputs", "error"))
        checks += _safety_failures(who, spec, inputs, safety, prefix)
    checks += _reference_form_failures(who, step.inputs, prefix)
    found, usable = _check_fallbacks(who, step.fallback_tools, catalog, f"{prefix}.fallback_tools")
    checks += found
    for k, fallback in usable:
        checks.append(
            _check_inputs(
                "fallback_inputs",
                f"{who} (fallback {fallback.name!r})",
                fallback,
                inputs,
                skip,
                f"{prefix}.fallback_tools[{k}]",
                "warning",
            )
        )
    return checks
