"""The seam between agents and tools: configuration, the call context, errors and the ToolBox.

An agent calls ``await toolbox.call(name, inputs, ToolCall(idempotency_key=step_id))`` and
gets the tool's output as a JSON-ready dict, or a :class:`ToolError`. The ToolBox does
everything that is the same for every tool — look-up, policy, input validation, the time
limit, output validation — so that an implementation only does its one job.

    CadreError
     └─ ToolError (code "tool_error" family; the instance's .code says which)
         unknown_tool       no tool of that name, or no implementation in this toolbox
         prohibited         the deployment's policy forbids the tool
         invalid_input      the inputs do not match the tool's input model (message lists each field)
         invalid_output     the implementation returned something its output model refuses (a bug)
         timeout            the call ran past its time limit (retryable)
         not_configured     the tool needs a setting that is not set (e.g. no database)
         not_found          a file or database that does not exist
         not_a_file         a path that names a folder (or a FIFO, device, socket)
         outside_workspace  a path that leads out of the workspace
         hard_linked        a workspace file with more than one hard link (another name may lie outside)
         reserved_path      a path into cadre's own bookkeeping folder
         idempotency_conflict  one idempotency key used for two different writes
         file_changed       a file changed under a half-done write in a way that cannot be repaired
         corrupt_marker     an idempotency marker that cadre cannot read
         io_error           another operating-system error on a workspace file
         write_refused      a SQL statement that would write
         sql_error          SQLite refused the statement (message has SQLite's text)
         not_allowed        a URL outside the allow-list (CADRE_HTTP_ALLOW)
         http_error         the HTTP server could not be reached (retryable)
         invalid_template   a text.render template that cannot be filled
         output_too_large   an output above ToolConfig.max_output_bytes (fails once, not retried)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError

from cadre.bus.errors import CadreError
from cadre.planner.catalog import Catalog, Safety
from cadre.planner.safety import SafetyContext


class ToolError(CadreError):
    """A tool call that did not produce an output; ``code`` says why, ``retryable`` whether to try again.

    ``output`` is set on ``invalid_output`` when the refused output is JSON data: the agent
    may ask a model to interpret it.
    """

    code = "tool_error"

    def __init__(self, tool: str, code: str, message: str, retryable: bool = False, *, output: Any = None) -> None:
        super().__init__(message)
        self.tool = tool
        self.code = code
        self.retryable = retryable
        self.output = output

    def __repr__(self) -> str:
        return (
            f"ToolError(tool={self.tool!r}, code={self.code!r}, message={self.message!r}, retryable={self.retryable})"
        )


@dataclass(frozen=True, slots=True)
class ToolConfig:
    """What the built-in tools may touch, decided once by the deployment.

    ``workspace``: the only folder fs.read / fs.write see. ``database``: the SQLite file of
    the sql tools (None: they answer ``not_configured``). ``http_allow``: URL prefixes http.get
    may fetch (e.g. ``"http://127.0.0.1:8080/"``); empty allows nothing. ``max_output_bytes``: the
    hard cap on one output as JSON (None: none); a larger one fails the call once with
    ``output_too_large``. Below it, an output too large to travel inline is stored by reference
    by the event log (``store.objects``), not here.

    The same two bounds hold for what fs.write records of the content it replaces (its undo
    record, for fs.restore): above ``undo_inline_max_bytes`` the content is kept beside the record
    under its digest, not inline (base64 in JSON); above ``max_output_bytes`` it is not kept at
    all: a ``compensable`` call is refused before it writes (``undo_too_large``), another writes and
    records that what it replaced cannot be put back.
    """

    workspace: Path
    database: Path | None = None
    http_allow: tuple[str, ...] = ()
    max_output_bytes: int | None = None
    undo_inline_max_bytes: int = 256 * 1024


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call's context.

    ``idempotency_key`` is the step id, so a redelivered step does not apply a side effect
    twice. ``timeout_s`` is set by the ToolBox to the limit it enforces, so an
    implementation that blocks in a thread can bound its own waits by it. ``compensable``:
    the workflow asked for compensation (``on_failure: compensate``), so a tool that records
    what it replaces (fs.write) refuses, before it changes anything, a call it could not undo.
    """

    idempotency_key: str
    timeout_s: float | None = None
    compensable: bool = False


ToolImpl = Callable[[BaseModel, ToolConfig, ToolCall], Awaitable[BaseModel]]
"""An implementation: validated inputs, the config and the call context in, an output model out."""

_In = TypeVar("_In", bound=BaseModel)


def typed_impl(
    tool: str, input_model: type[_In], fn: Callable[[_In, ToolConfig, ToolCall], Awaitable[BaseModel]]
) -> ToolImpl:
    """Adapt a function over one input model to the ToolImpl signature (checking the model's type)."""

    async def impl(inputs: BaseModel, config: ToolConfig, call: ToolCall) -> BaseModel:
        if not isinstance(inputs, input_model):
            raise ToolError(
                tool, "invalid_input", f"{tool} expects {input_model.__name__}, got {type(inputs).__name__}"
            )
        return await fn(inputs, config, call)

    return impl


def strict_inputs(tool: str, model: type[_In], inputs: Mapping[str, Any]) -> _In:
    """``inputs`` validated as the JSON they are against ``model`` in strict mode: the published schema
    as written, with no coercion (``"10"`` or ``true`` is not an int). ToolError ``invalid_input``."""
    try:
        raw = json.dumps(inputs, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ToolError(tool, "invalid_input", f"invalid input for {tool}: the inputs are not JSON ({e})") from e
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as e:
        raise ToolError(tool, "invalid_input", f"invalid input for {tool}: {describe_validation_error(e)}") from e


def describe_validation_error(err: ValidationError) -> str:
    """``"sql: Field required; params[0]: Input should be …"`` — each error with its location."""
    parts: list[str] = []
    for e in err.errors(include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        parts.append(f"{loc or '(inputs)'}: {e['msg']}")
    return "; ".join(parts)


class ToolBox:
    """The tools an agent may call: a catalog (what they are) and implementations (what runs).

    ``call`` never runs a tool whose inputs fail validation or whose spec is prohibited, and
    never returns an output its model refuses. Exceptions other than :class:`ToolError`
    escaping an implementation are bugs and propagate as they are.
    """

    def __init__(self, catalog: Catalog, impls: Mapping[str, ToolImpl], config: ToolConfig) -> None:
        strangers = sorted(set(impls) - set(catalog))
        if strangers:
            raise ValueError(f"implementations for tools not in the catalog: {', '.join(strangers)}")
        self.catalog = catalog
        self.config = config
        self._impls = dict(impls)

    async def call(
        self,
        name: str,
        inputs: dict[str, Any],
        call: ToolCall,
        *,
        timeout: float | None = None,  # noqa: ASYNC109  # overrides the spec's limit; applied with asyncio.timeout
    ) -> dict[str, Any]:
        """Run tool ``name`` on ``inputs`` within ``timeout`` seconds (default: the spec's ``timeout_s``)."""
        spec = self.catalog.get(name)
        impl = self._impls.get(name)
        if spec is None:
            known = ", ".join(sorted(self.catalog)) or "(none)"
            raise ToolError(name, "unknown_tool", f"no tool named {name!r}; the catalog has: {known}")
        if spec.safety is Safety.PROHIBITED:
            raise ToolError(name, "prohibited", f"tool {name!r} is prohibited by this deployment's policy")
        if impl is None:
            raise ToolError(name, "unknown_tool", f"tool {name!r} is in the catalog but this toolbox cannot run it")
        model = strict_inputs(name, spec.input_model, inputs)
        if spec.rule is not None:  # the tool's safety rule, the last line before the implementation runs
            for v in spec.rule(inputs, SafetyContext(http_allow=self.config.http_allow)):
                raise ToolError(name, v.code, v.message)

        limit = spec.timeout_s if timeout is None else timeout
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                out = await impl(model, self.config, replace(call, timeout_s=limit))
        except TimeoutError as e:
            if not deadline.expired():  # raised by the implementation itself, not our limit
                raise
            raise ToolError(name, "timeout", f"{name} did not finish within {limit:g} s", retryable=True) from e
        data = self._checked_output(name, spec.output_model, out)
        cap = self.config.max_output_bytes
        if cap is not None and (size := len(json.dumps(data, ensure_ascii=False).encode())) > cap:
            raise ToolError(
                name,
                "output_too_large",
                f"{name} returned {size} bytes of output as JSON; the limit is {cap} (tool_output_max_bytes): "
                "ask for less (max_rows, max_bytes, a narrower query)",
            )
        return data

    @staticmethod
    def _checked_output(name: str, model: type[BaseModel], out: object) -> dict[str, Any]:
        if not isinstance(out, BaseModel):
            raise ToolError(
                name,
                "invalid_output",
                f"{name} returned {type(out).__name__}, not {model.__name__}",
                output=_json_or_none(out),
            )
        try:
            data = out.model_dump(mode="json")
            model.model_validate(data)
        except ValidationError as e:
            raise ToolError(
                name,
                "invalid_output",
                f"{name} returned output its schema refuses: {describe_validation_error(e)}",
                output=data,
            ) from e
        except PydanticSerializationError as e:
            raise ToolError(name, "invalid_output", f"{name} returned output that is not JSON: {e}") from e
        return data


def _json_or_none(value: object) -> Any:
    """``value`` when it is JSON data (a copy, as JSON would give it back), else None."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError):
        return None
