"""Field-level differences between two JSON values (what a replay expected and what it got).

Pure. Paths are JSON paths as msgspec writes them (``$.data.plan.nodes[0].tool``); a value
present on one side only is left :data:`msgspec.UNSET` on the other, so the JSON form omits
it and the text form says ``(absent)``.
"""

from __future__ import annotations

from typing import Any

import msgspec

_json = msgspec.json.Encoder(order="deterministic")


class FieldDiff(msgspec.Struct, frozen=True, kw_only=True):
    """One differing value: where, what the record holds (``expected``), what came out (``actual``)."""

    path: str
    expected: Any = msgspec.UNSET
    actual: Any = msgspec.UNSET

    def describe(self, width: int = 160) -> str:
        """``$.path: <expected> -> <actual>`` for people, each value cut to ``width`` characters."""
        return f"{self.path}: {show(self.expected, width)} -> {show(self.actual, width)}"


def show(value: Any, width: int = 160) -> str:
    """A value as compact JSON for a line of text (``(absent)`` for UNSET)."""
    if value is msgspec.UNSET:
        return "(absent)"
    text = _json.encode(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def diff(expected: Any, actual: Any, path: str = "$") -> list[FieldDiff]:
    """Every leaf where ``actual`` differs from ``expected`` (JSON values: dicts, lists or tuples, scalars).

    Objects are compared key by key (the expected side's keys first, then keys only the actual
    side has); arrays item by item, the longer side's extra items reported as absent on the
    other; anything else by equality (``1 == 1.0``, as JSON numbers are).
    """
    if isinstance(expected, dict) and isinstance(actual, dict):
        out: list[FieldDiff] = []
        for key, value in expected.items():
            where = f"{path}.{key}"
            if key in actual:
                out.extend(diff(value, actual[key], where))
            else:
                out.append(FieldDiff(path=where, expected=value))
        out.extend(
            FieldDiff(path=f"{path}.{key}", actual=value) for key, value in actual.items() if key not in expected
        )
        return out
    if isinstance(expected, list | tuple) and isinstance(actual, list | tuple):
        out = []
        for i, (a, b) in enumerate(zip(expected, actual, strict=False)):
            out.extend(diff(a, b, f"{path}[{i}]"))
        out.extend(FieldDiff(path=f"{path}[{i}]", expected=v) for i, v in enumerate(expected) if i >= len(actual))
        out.extend(FieldDiff(path=f"{path}[{i}]", actual=v) for i, v in enumerate(actual) if i >= len(expected))
        return out
    if type(expected) is not type(actual) and not (_number(expected) and _number(actual)):
        return [FieldDiff(path=path, expected=expected, actual=actual)]
    return [] if expected == actual else [FieldDiff(path=path, expected=expected, actual=actual)]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
