"""Placeholder outputs for a dry run: a value of a tool's output schema, built from the schema.

A dry run runs no tool, yet later tasks reference earlier outputs (``${top.rows}``); a
placeholder of the right shape lets their decomposition and validation happen for real.
Objects get every property, arrays one item (so ``${top.rows.0}`` resolves), strings
:data:`PLACEHOLDER`, numbers 0, booleans false; an ``enum`` or ``const`` gives its first value,
a union its first non-null branch. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Final

PLACEHOLDER: Final = "<dry run>"
"""The string a dry run puts where a tool's output would have text."""

_MAX_DEPTH: Final = 8


def placeholder(schema: dict[str, Any]) -> Any:
    """A value of JSON Schema ``schema`` (as pydantic writes them: ``$defs`` and local ``$ref``)."""
    return _value(schema, schema.get("$defs", {}), 0)


def _value(schema: dict[str, Any], defs: dict[str, Any], depth: int) -> Any:
    if depth > _MAX_DEPTH:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"))
        return _value(target, defs, depth + 1) if isinstance(target, dict) else None
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for union in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(union, ()) if isinstance(o, dict) and o.get("type") != "null"]
        if options:
            return _value(options[0], defs, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    match kind:
        case "object":
            props = schema.get("properties", {})
            return {name: _value(sub, defs, depth + 1) for name, sub in props.items() if isinstance(sub, dict)}
        case "array":
            items = schema.get("items")
            return [_value(items, defs, depth + 1)] if isinstance(items, dict) else []
        case "string":
            return PLACEHOLDER
        case "integer":
            return 0
        case "number":
            return 0.0
        case "boolean":
            return False
        case "null":
            return None
    if "properties" in schema:
        return _value({**schema, "type": "object"}, defs, depth)
    return PLACEHOLDER
