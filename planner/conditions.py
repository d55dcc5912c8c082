"""Checked conditions: small, safe boolean expressions over JSON data, in CEL.

A condition is a `CEL <https://cel.dev>`_ expression (the ``common-expression-language``
package, a Rust implementation) over named JSON values: a step's preconditions see ``inputs``,
its postconditions ``inputs`` and ``output``. What users write::

    has(output.rows)                       a field exists
    size(output.rows) >= 3                 a count is above a bound
    output.row_count > 0 && output.truncated == false
    output.status in ['ok', 'done']        a value is one of
    inputs.path.startsWith('reports/')     a value matches
    output.rows.all(r, r.total >= 0)       every row (a macro: at most MAX_MACROS per condition)

Why CEL: no side effects, no attribute escapes (``output.__class__`` is only a missing key), no
I/O, checked integer overflow, no coercion between types, and a parser that reports where an
expression is wrong. It is not free of blow-up: nested macros are O(n^k) over a list, so a
condition has at most :data:`MAX_MACROS` of them and at most :data:`MAX_LENGTH` characters.

:func:`parse` compiles once (and refuses unknown names), :func:`problem` says why a text is not a
condition (the validator's ``condition_parses`` check), :func:`evaluate` runs one over values and
never raises: a condition that cannot be evaluated (a missing field, a type mismatch, a result
that is not a boolean) does not hold, and says why. Issue 16's flows reuse this module for branch
conditions.

    CadreError
     └─ InvalidCondition               a text that is not a condition (code "invalid_condition")
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final

import cel

from cadre.bus.errors import CadreError

MAX_LENGTH: Final = 1_000
"""Characters a condition may have."""

MAX_MACROS: Final = 2
"""Comprehension macros (``all``, ``exists``, ``exists_one``, ``map``, ``filter``) a condition may use."""

PRE_NAMES: Final = frozenset({"inputs"})
"""What a precondition may name."""

POST_NAMES: Final = frozenset({"inputs", "output"})
"""What a postcondition may name."""

_MACRO = re.compile(r"\.\s*(?:all|exists_one|exists|map|filter)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*,")


class InvalidCondition(CadreError):
    """A condition that does not compile, is too long or too nested, or names an unknown value."""

    code = "invalid_condition"


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition and its text."""

    text: str
    program: cel.Program


@dataclass(frozen=True, slots=True)
class Outcome:
    """A condition's verdict: ``passed``, or why not (``reason``: it was false, or could not be evaluated)."""

    text: str
    passed: bool
    reason: str = ""


def _first_line(message: str) -> str:
    """cel's error without the echoed expression and caret lines, nor the advice after its first sentence."""
    line = message.split("\n", 1)[0].strip()
    return line.split(". ", 1)[0].rstrip(".")


@functools.lru_cache(maxsize=1024)
def _compiled(text: str, names: frozenset[str]) -> Condition:
    if len(text) > MAX_LENGTH:
        raise InvalidCondition(f"condition is {len(text)} characters long; the limit is {MAX_LENGTH}")
    if not text.strip():
        raise InvalidCondition("condition is empty; write a CEL expression such as 'size(output.rows) > 0'")
    macros = _MACRO.findall(text)
    if len(macros) > MAX_MACROS:
        raise InvalidCondition(
            f"condition {text!r} uses {len(macros)} list macros (all, exists, map, filter); the limit is {MAX_MACROS}"
        )
    try:
        program = cel.compile(text)
    except ValueError as exc:
        raise InvalidCondition(f"condition {text!r} is not valid CEL: {_first_line(str(exc))}") from None
    unknown = sorted(set(program.variables()) - names - set(macros))
    if unknown:
        raise InvalidCondition(
            f"condition {text!r} names {', '.join(unknown)}; it may only name {', '.join(sorted(names))}"
        )
    return Condition(text, program)


def parse(text: str, names: Collection[str] = POST_NAMES) -> Condition:
    """``text`` compiled, naming only ``names`` (compiled once per text); :class:`InvalidCondition` if not."""
    return _compiled(text, frozenset(names))


def problem(text: str, names: Collection[str] = POST_NAMES) -> str | None:
    """Why ``text`` is not a condition over ``names``; None when it is one."""
    try:
        parse(text, names)
    except InvalidCondition as exc:
        return str(exc)
    return None


def evaluate(condition: Condition, values: Mapping[str, Any]) -> Outcome:
    """Whether ``condition`` holds over ``values`` (never raises: an error is a failed condition)."""
    try:
        result = condition.program.execute(cel.Context(dict(values)))
    except KeyError as exc:
        return Outcome(condition.text, False, f"it names {exc.args[0]!r}, which is not there")
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, RuntimeError, IndexError) as exc:
        return Outcome(condition.text, False, f"it could not be evaluated: {_first_line(str(exc))}")
    if not isinstance(result, bool):
        return Outcome(condition.text, False, f"it gave {type(result).__name__} {result!r:.60}, not true or false")
    return Outcome(condition.text, result, "" if result else "it is false")


def check(text: str, values: Mapping[str, Any], names: Collection[str] = POST_NAMES) -> Outcome:
    """:func:`evaluate` of ``text`` parsed over ``names``; a text that does not parse does not hold."""
    try:
        condition = parse(text, names)
    except InvalidCondition as exc:
        return Outcome(text, False, str(exc))
    return evaluate(condition, values)


__all__ = [
    "MAX_LENGTH",
    "MAX_MACROS",
    "POST_NAMES",
    "PRE_NAMES",
    "Condition",
    "InvalidCondition",
    "Outcome",
    "check",
    "evaluate",
    "parse",
    "problem",
]
