"""References between tasks: ``"${task_id}"`` and ``"${task_id.field.sub}"`` in tool inputs.

A value that is *exactly* such a string, anywhere in an inputs dict or list, stands for an
upstream output: ``"${top}"`` is the whole output object of task ``top``, ``"${top.rows}"``
its ``rows`` field, ``"${top.rows.0}"`` the first item of that list (numeric segments index
lists). A string that merely *contains* ``${...}`` inside other text is plain text and is
left alone (``text.render`` has its own ``{name}`` placeholders).

Task ids and path segments are tokens (``[A-Za-z0-9_-]+``), so the dot is always a separator.
A step's id is ``<task_id>.<local part>`` (``top.s1``, ``top.a2.s1``), which makes
``"${top.s1.rows}"`` read as "field ``rows`` of step ``top.s1``": :func:`with_step_outputs`
nests the outputs of a task's earlier steps under the task id so that :func:`resolve`
serves such references too.

Everything here is pure: no I/O, and values are copied, never mutated.

    CadreError
     └─ RefError                      a reference that cannot be resolved (code "unresolved_reference")
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cadre.bus.errors import CadreError

__all__ = [
    "Ref",
    "RefError",
    "copy_value",
    "find_refs",
    "format_location",
    "is_ref",
    "lookup",
    "parse_ref",
    "resolve",
    "with_step_outputs",
]

TOKEN = r"[A-Za-z0-9_-]+"
# The whole string must be the reference; re.fullmatch enforces it.
_REF = re.compile(rf"\$\{{(?P<task>{TOKEN})(?P<path>(?:\.{TOKEN})*)\}}")
_SIMPLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Ref:
    """One reference found in a value.

    ``task_id`` and ``path`` say what it points at; ``where`` is its JSON-path-like location
    for people (``inputs.values.top``, ``inputs.params[0]``) and ``loc`` the same location as
    keys and indices relative to the searched value (``("values", "top")``), the shape
    pydantic uses in its error locations.
    """

    task_id: str
    path: tuple[str, ...] = ()
    where: str = ""
    loc: Loc = ()

    @property
    def text(self) -> str:
        """The reference as written: ``${task_id.path}``."""
        return "${" + ".".join((self.task_id, *self.path)) + "}"


class RefError(CadreError):
    """A reference whose target does not exist in the outputs it was resolved against."""

    code = "unresolved_reference"

    def __init__(self, ref: Ref, reason: str, fix: str) -> None:
        super().__init__(f"cannot resolve {ref.text} at {ref.where}: {reason}; {fix}")
        self.ref = ref
        self.reason = reason
        self.fix = fix


def format_location(root: str, loc: Loc) -> str:
    """``root`` followed by ``loc`` as ``.key`` / ``[index]`` / ``["odd key"]`` segments."""
    out = root
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _SIMPLE_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def parse_ref(value: Any, *, where: str = "", loc: Loc = ()) -> Ref | None:
    """The reference ``value`` is, or None when it is anything else (including text around one)."""
    if not isinstance(value, str):
        return None
    m = _REF.fullmatch(value)
    if m is None:
        return None
    return _ref(m, where, loc)


def _ref(m: re.Match[str], where: str, loc: Loc) -> Ref:
    path = tuple(m["path"].split(".")[1:]) if m["path"] else ()
    return Ref(task_id=m["task"], path=path, where=where, loc=loc)


def is_ref(value: Any) -> bool:
    """Whether ``value`` is exactly a reference string."""
    return parse_ref(value) is not None


def find_refs(value: Any, *, root: str = "inputs") -> list[Ref]:
    """Every reference nested anywhere in ``value``, in document order.

    ``root`` names ``value`` itself in each :attr:`Ref.where` (``inputs`` gives
    ``inputs.values.top``).
    """
    refs: list[Ref] = []
    _find(value, (), root, refs)
    return refs


def _find(value: Any, loc: Loc, root: str, refs: list[Ref]) -> None:
    """:func:`find_refs`' walk: only strings that open with ``${`` are matched, and a location is
    spelled out only for a reference (every validation of a step walks its inputs)."""
    if isinstance(value, str):
        if value.startswith("${") and (m := _REF.fullmatch(value)) is not None:
            refs.append(_ref(m, format_location(root, loc), loc))
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _find(item, (*loc, str(key)), root, refs)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _find(item, (*loc, index), root, refs)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def lookup(ref: Ref, outputs: Mapping[str, Mapping[str, Any]]) -> Any:
    """The value ``ref`` points at in ``outputs`` (task id -> output object), copied.

    Raises :class:`RefError` naming the reference, where it stands, and the first segment
    of its path that is missing, with what exists there instead.
    """
    if ref.task_id not in outputs:
        available = ", ".join(sorted(outputs)) or "none"
        raise RefError(
            ref,
            f"there is no output of task {ref.task_id!r} (outputs available: {available})",
            f"make the task depend on {ref.task_id!r} or fix the task id",
        )
    current: Any = outputs[ref.task_id]
    walked = ref.task_id
    for segment in ref.path:
        if isinstance(current, Mapping):
            if segment not in current:
                fields = ", ".join(str(k) for k in current) or "no fields"
                owner = f"task {walked!r} has no output field" if walked == ref.task_id else f"{walked!r} has no field"
                raise RefError(
                    ref,
                    f"{owner} {segment!r}; it has: {fields}",
                    f"use one of those fields, or reference the whole output as ${{{walked}}}",
                )
            current = current[segment]
        elif isinstance(current, list | tuple):
            if not segment.isdigit():
                raise RefError(
                    ref,
                    f"{walked!r} is a list of {len(current)} items and {segment!r} is not an index",
                    f"use a numeric index from 0 to {len(current) - 1}" if current else "the list is empty",
                )
            index = int(segment)
            if index >= len(current):
                raise RefError(
                    ref,
                    f"{walked!r} has {len(current)} items; index {index} is out of range",
                    f"use an index below {len(current)}" if current else "the list is empty; do not index it",
                )
            current = current[index]
        else:
            raise RefError(
                ref,
                f"{walked!r} is {_describe(current)}, which has no field {segment!r}",
                f"reference {walked!r} itself as ${{{walked}}}",
            )
        walked = f"{walked}.{segment}"
    # A copy, so that the resolved inputs never alias (and never let anyone mutate) a stored output.
    return copy_value(current)


_ATOMS = frozenset({str, int, float, bool, type(None)})


def copy_value(value: Any) -> Any:
    """A deep copy of ``value``: JSON values (dicts, lists, strings, numbers) copied by a short
    walk, anything else by :func:`copy.deepcopy` (which costs several times more on the small
    inputs and outputs that steps pass around)."""
    t = type(value)
    if t in _ATOMS:
        return value
    if t is dict:
        return {k: v if type(v) in _ATOMS else copy_value(v) for k, v in value.items()}
    if t is list:
        return [v if type(v) in _ATOMS else copy_value(v) for v in value]
    return copy.deepcopy(value)


def resolve(
    value: Any,
    outputs: Mapping[str, Mapping[str, Any]],
    *,
    root: str = "inputs",
    leave: Collection[str] = (),
) -> Any:
    """A copy of ``value`` with every reference replaced by the value it points at.

    References to the task ids in ``leave`` stay as they are (the step validator leaves a
    task's references to its own earlier steps, whose outputs do not exist yet). Raises
    :class:`RefError` on the first reference that does not resolve, in document order.
    """
    return _resolve(value, outputs, root, (), frozenset(leave))


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> tuple[str, tuple[str, ...]] | None:
    """(task id, path) of a string that is exactly a reference, else None (the same reference
    strings recur in every step of every workflow of a plan)."""
    m = _REF.fullmatch(text)
    if m is None:
        return None
    return m["task"], tuple(m["path"].split(".")[1:]) if m["path"] else ()


def _resolve(value: Any, outputs: Mapping[str, Mapping[str, Any]], root: str, loc: Loc, leave: frozenset[str]) -> Any:
    if isinstance(value, str):
        if value.startswith("${") and (parsed := _parsed(value)) is not None:
            task_id, path = parsed
            if task_id in leave:
                return value
            if task_id in outputs:  # the common case, a path of fields through dicts: walked here
                current: Any = outputs[task_id]
                for segment in path:
                    if type(current) is not dict or segment not in current:
                        break
                    current = current[segment]
                else:
                    return copy_value(current)
            try:  # anything else (a list index, a missing field) as lookup says
                return lookup(Ref(task_id=task_id, path=path, loc=loc), outputs)
            except RefError:  # spell the location out only for the error (lookup is pure: it fails again)
                return lookup(Ref(task_id=task_id, path=path, where=format_location(root, loc), loc=loc), outputs)
        return value
    if type(value) is dict or isinstance(value, Mapping):  # a plain dict skips the ABC's check
        return {key: _resolve(item, outputs, root, (*loc, str(key)), leave) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve(item, outputs, root, (*loc, i), leave) for i, item in enumerate(value)]
    if isinstance(value, tuple):
        return tuple(_resolve(item, outputs, root, (*loc, i), leave) for i, item in enumerate(value))
    return value


def with_step_outputs(
    outputs: Mapping[str, Mapping[str, Any]], step_outputs: Mapping[str, Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """``outputs`` plus the outputs of a task's finished steps, nested under the task id.

    ``{"top.s1": out}`` becomes ``{"top": {"s1": out}}`` and ``{"top.a2.s1": out}`` becomes
    ``{"top": {"a2": {"s1": out}}}``, so ``"${top.s1.rows}"`` resolves to ``out["rows"]``.
    A task's own output exists only once all its steps are done, so a step's task id never
    collides with an entry of ``outputs``; if it does, that is a caller bug and raises
    ``ValueError``.
    """
    merged: dict[str, Any] = dict(outputs)
    for step_id, output in step_outputs.items():
        task_id, *parts = step_id.split(".")
        if not parts:
            raise ValueError(f"step id {step_id!r} is not of the form '<task_id>.<step>' (like 'top.s1')")
        if task_id in outputs:
            raise ValueError(
                f"step {step_id!r} belongs to task {task_id!r}, which already has an output; "
                "pass the outputs of the steps of unfinished tasks only"
            )
        node: dict[str, Any] = merged.setdefault(task_id, {})
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = output
    return merged
