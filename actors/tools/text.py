"""text.render: str.format templates over JSON values, with lookups only — no code, no attributes.

Placeholders name values: ``{title}``, ``{top.rows}`` and ``{top[rows]}`` (key look-ups),
``{top.rows[0]}`` (a list index). ``.name`` is *always* a key look-up, never ``getattr``, so
``{x.__class__}`` is refused. Conversions: ``!t`` renders ``{"columns": [...], "rows":
[[...]]}`` (an sql.query output) or a list of objects as a Markdown table, ``!j`` any value
as compact JSON; ``!s``, ``!r``, ``!a`` as usual. Without a conversion, objects and lists
render as JSON and scalars as str.format would.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from cadre.actors.tools.base import ToolCall, ToolConfig, ToolError
from cadre.planner.builtin_tools import TextRenderInput, TextRenderOutput
from cadre.planner.safety import MAX_FORMAT_WIDTH

TOOL = "text.render"

_FIRST = re.compile(r"[^.\[]*")
_STEP = re.compile(r"\.([^.\[]+)|\[([^\]]+)\]")


def _fail(message: str) -> ToolError:
    return ToolError(TOOL, "invalid_template", f"invalid template: {message}")


def to_json(value: Any) -> str:
    """Compact JSON, non-ASCII kept as is."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _inline(value: Any) -> str:
    """A value inside a cell: a list shows its items separated by commas, an object its values by spaces."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(_inline(v) for v in value)
    if isinstance(value, Mapping):
        return " ".join(_inline(v) for v in value.values())
    return str(value)


def _cell(value: Any) -> str:
    text = _inline(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "<br>").replace("\n", "<br>")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def markdown_table(value: Any) -> str:
    """A Markdown table of ``{"columns": [...], "rows": [[...]]}`` or of a list of objects.

    Numeric columns are right-aligned; ``|`` and line breaks in cells are escaped. A list in
    a cell shows its items separated by commas and an object its values separated by spaces,
    so ``{"name": "id", "type": "INTEGER"}`` items read as ``id INTEGER, …``.
    """
    if isinstance(value, Mapping) and "columns" in value and "rows" in value:
        columns, rows = value["columns"], value["rows"]
        if not (isinstance(columns, list) and isinstance(rows, list) and all(isinstance(r, list) for r in rows)):
            raise _fail("!t needs 'columns' to be a list and 'rows' a list of lists")
        if any(len(r) != len(columns) for r in rows):
            raise _fail(f"!t: every row needs {len(columns)} values, one per column")
    elif isinstance(value, list) and all(isinstance(item, Mapping) for item in value):
        columns = list(dict.fromkeys(k for item in value for k in item))
        rows = [[item.get(c) for c in columns] for item in value]
    else:
        raise _fail(f"!t renders an sql.query output ({{columns, rows}}) or a list of objects, not {_kind(value)}")
    if not columns:
        return ""
    numeric = [
        any(_is_number(r[i]) for r in rows) and all(_is_number(r[i]) or r[i] is None for r in rows)
        for i in range(len(columns))
    ]
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "| " + " | ".join("---:" if n else "---" for n in numeric) + " |",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "null" if value is None else f"a {type(value).__name__}"


class _SafeFormatter(string.Formatter):
    """A Formatter whose field look-ups are key and index look-ups only."""

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, str]:
        first = _FIRST.match(field_name)
        name = first.group() if first else ""
        if name == "" or name.isdigit():
            raise _fail(f"positional placeholder {{{field_name}}}: name a value instead, like {{title}}")
        if name not in kwargs:
            have = ", ".join(sorted(kwargs)) or "(none)"
            raise _fail(f"missing key {name!r} in {{{field_name}}}; the values are: {have}")
        obj, path, pos = kwargs[name], name, len(name)
        while pos < len(field_name):
            step = _STEP.match(field_name, pos)
            if step is None:
                raise _fail(f"cannot read {{{field_name}}} after {path!r}")
            attr, index = step.groups()
            obj = self._step(field_name, path, obj, attr, index)
            path, pos = path + step.group(), step.end()
        return obj, name

    @staticmethod
    def _step(field: str, path: str, obj: Any, attr: str | None, index: str | None) -> Any:
        if attr is not None:  # `.name`: a key, never an attribute
            if not isinstance(obj, Mapping):
                raise _fail(
                    f"{{{field}}}: '.{attr}' looks up a key, but {path!r} is {_kind(obj)}; "
                    "attribute access is not allowed"
                )
            if attr not in obj:
                raise _fail(
                    f"missing key {attr!r} in {{{field}}}; {path!r} has: {', '.join(map(str, obj)) or '(none)'}"
                )
            return obj[attr]
        assert index is not None  # the pattern matched one of its two groups
        if isinstance(obj, Mapping):
            if index not in obj:
                raise _fail(f"missing key {index!r} in {{{field}}}")
            return obj[index]
        if isinstance(obj, list):
            if not index.lstrip("-").isdigit():
                raise _fail(f"{{{field}}}: {path!r} is a list; index it with a number, not {index!r}")
            i = int(index)
            if not -len(obj) <= i < len(obj):
                raise _fail(f"{{{field}}}: index {i} is out of range ({path!r} has {len(obj)} items)")
            return obj[i]
        raise _fail(f"{{{field}}}: '[{index}]' needs an object or a list, but {path!r} is {_kind(obj)}")

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "t":
            return markdown_table(value)
        if conversion == "j":
            return to_json(value)
        if conversion in (None, "s", "r", "a"):
            return super().convert_field(value, conversion)
        raise _fail(f"unknown conversion !{conversion}; use !t (table), !j (JSON), !s, !r or !a")

    def format_field(self, value: Any, format_spec: str) -> Any:
        if any(int(n) > MAX_FORMAT_WIDTH for n in re.findall(r"\d+", format_spec)):
            raise _fail(f"format spec {format_spec!r} is wider than {MAX_FORMAT_WIDTH}")
        if isinstance(value, dict | list) and not format_spec:
            return to_json(value)
        try:
            return format(value, format_spec)
        except (ValueError, TypeError) as e:
            raise _fail(f"format spec {format_spec!r} does not apply to {_kind(value)}: {e}") from e


def render_template(template: str, values: Mapping[str, Any]) -> str:
    """Fill ``template`` from ``values``; ToolError ``invalid_template`` says what is wrong."""
    try:
        return _SafeFormatter().vformat(template, (), values)
    except ValueError as e:  # a malformed template: "Single '}' encountered", "unmatched '{'", …
        raise _fail(str(e)) from e


async def text_render(inputs: TextRenderInput, config: ToolConfig, call: ToolCall) -> TextRenderOutput:
    """Render the template (pure computation; no thread needed)."""
    return TextRenderOutput(text=render_template(inputs.template, inputs.values))
