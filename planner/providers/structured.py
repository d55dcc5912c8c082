"""Parse and repair, sans-io: ask, validate, ask once more with the problems, or give up.

:func:`structured_flow` is a generator that does no I/O. It yields the :class:`LLMRequest`
to send and receives what came back (an :class:`LLMResponse`, or the :class:`ProviderError`
the call raised); it returns an :class:`Outcome`. Its one driver is the actor context
(:meth:`actors.context.Context.infer`), which gates every request by the budget and takes
each reply from its answers (the provider live, the record under replay), so a replay takes
the same decisions. The driver contract::

    flow = structured_flow(request, validate)
    request = next(flow)
    while True:
        reply = <answer request: an LLMResponse, or the ProviderError raised>
        try:
            request = flow.send(reply)
        except StopIteration as done:
            return done.value            # the Outcome

Rules (each invariant holds for every path through the flow):

* at most two requests: the original and, when the first output is invalid, one repair;
* the repair request has the same kind, model, schema and limits; ``repair_of`` holds the
  invalid output, and the prompt is the original one plus that output and its problems,
  one per line, located by JSON path (``$.nodes[0].id: ...``);
* a :class:`ProviderError` ends the flow without a repair round (the SDK already retried),
  with ``fallback_reason`` ``"provider_error: <code>"``;
* output still invalid after the repair ends it with ``"invalid_output_after_repair"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import msgspec
import pydantic

from cadre.planner.providers.base import LLMRequest, LLMResponse, ProviderError, Usage

__all__ = [
    "Attempt",
    "InvalidOutput",
    "Outcome",
    "StructuredFlow",
    "problems_of",
    "repair_request",
    "structured_flow",
]

T = TypeVar("T")

MAX_QUOTED_CHARS: Final = 4000
"""How much of an invalid answer a repair prompt quotes (the rest is elided)."""

INVALID_AFTER_REPAIR: Final = "invalid_output_after_repair"


class InvalidOutput(ValueError):
    """Raised by a validator that found several problems, each already located by JSON path."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Attempt:
    """One round: the request sent and what came back (a response, or an error), and the
    problems found in the response's output (empty when it was valid)."""

    request: LLMRequest
    response: LLMResponse | None = None
    error: ProviderError | None = None
    problems: tuple[str, ...] = ()

    @property
    def summary(self) -> str:
        """One line for logs and events."""
        if self.error is not None:
            return f"error {self.error.code}: {self.error.message}"
        if self.problems:
            more = f" (+{len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"invalid output: {self.problems[0]}{more}"
        return "valid output"


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """The end of a structured flow: ``value`` when an output passed validation, else
    ``None`` and the ``fallback_reason``. ``repaired`` says a repair round was sent."""

    value: T | None
    attempts: tuple[Attempt, ...]
    repaired: bool
    fallback_reason: str | None

    @property
    def ok(self) -> bool:
        return self.fallback_reason is None

    @property
    def usage(self) -> Usage:
        """Tokens spent over every round, including answers that came back as errors
        (a refusal or a truncated answer is billed too)."""
        total = Usage(input_tokens=0, output_tokens=0)
        for attempt in self.attempts:
            if attempt.response is not None:
                total = total + attempt.response.usage
            elif attempt.error is not None and attempt.error.usage is not None:
                total = total + attempt.error.usage
        return total

    @property
    def responses(self) -> list[LLMResponse]:
        return [a.response for a in self.attempts if a.response is not None]


StructuredFlow = Generator[LLMRequest, LLMResponse | ProviderError, Outcome[T]]
"""The flow's type: yields requests, receives responses or errors, returns an :class:`Outcome`."""


def _path(loc: Iterable[int | str]) -> str:
    out = "$"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def problems_of(exc: Exception) -> list[str]:
    """Readable problems, one per line, each starting with the JSON path it is about."""
    if isinstance(exc, InvalidOutput):
        return list(exc.problems)
    if isinstance(exc, pydantic.ValidationError):
        problems = []
        for err in exc.errors(include_url=False):
            line = f"{_path(err['loc'])}: {err['msg']}"
            if err["type"] not in ("missing", "extra_forbidden") and "input" in err:
                line += f" (got {_quote(err['input'], 60)})"
            problems.append(line)
        return problems
    if isinstance(exc, msgspec.ValidationError):  # "Expected `int`, got `str` - at `$.nodes[0].id`"
        message, sep, where = str(exc).rpartition(" - at `")
        return [f"{where.rstrip('`')}: {message}"] if sep else [f"$: {exc}"]
    return [f"$: {exc}"]


def _quote(value: Any, limit: int) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(
    response: LLMResponse, request: LLMRequest, validate: Callable[[dict[str, Any]], T]
) -> tuple[T | None, list[str]]:
    if response.output is None:
        got = _quote(response.text, 80) if response.text else "an empty answer"
        return None, [f"$: expected one JSON object for `{request.schema_name}`, got {got}"]
    try:
        return validate(response.output), []
    except (ValueError, TypeError, msgspec.ValidationError) as exc:
        return None, problems_of(exc) or [f"$: {type(exc).__name__}"]


def repair_request(request: LLMRequest, previous: str, problems: Iterable[str]) -> LLMRequest:
    """The repair round for ``request``: same kind, model, schema and limits; the prompt
    quotes the invalid answer and lists its problems."""
    quoted = previous if len(previous) <= MAX_QUOTED_CHARS else previous[:MAX_QUOTED_CHARS] + " [...]"
    listed = "\n".join(f"- {p}" for p in problems)
    prompt = (
        f"{request.prompt}\n\n"
        "Your previous answer was not valid:\n"
        f"<previous_answer>\n{quoted}\n</previous_answer>\n\n"
        f"Problems, by JSON path:\n{listed}\n\n"
        f"Answer again with one complete JSON object for `{request.schema_name}` that fixes every problem."
    )
    return msgspec.structs.replace(request, prompt=prompt, repair_of=previous)


def structured_flow(request: LLMRequest, validate: Callable[[dict[str, Any]], T]) -> StructuredFlow[T]:
    """Ask for ``request``; validate the output with ``validate`` (which raises ValueError,
    pydantic's ValidationError or :class:`InvalidOutput` with readable problems); repair once."""
    attempts: list[Attempt] = []
    current = request
    for round_ in (1, 2):
        reply = yield current
        repaired = round_ == 2
        if isinstance(reply, ProviderError):
            attempts.append(Attempt(request=current, error=reply))
            return Outcome(None, tuple(attempts), repaired, f"provider_error: {reply.code}")
        value, problems = _check(reply, request, validate)
        attempts.append(Attempt(request=current, response=reply, problems=tuple(problems)))
        if not problems:
            return Outcome(value, tuple(attempts), repaired, None)
        current = repair_request(request, reply.text, problems)
    return Outcome(None, tuple(attempts), True, INVALID_AFTER_REPAIR)
