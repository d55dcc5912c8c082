"""Settings that fail to parse, said in one line: which variable, what was expected, an example.

pydantic-settings reports a bad ``CADRE_*`` value as a multi-line ``ValidationError`` naming the
field, or (for a list or object setting that is not JSON) as a ``SettingsError`` traceback.
:func:`explain` turns either into one sentence a person can act on; ``Settings.load`` raises it
as :class:`InvalidSettings`.
"""

from __future__ import annotations

import re
import types
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic.fields import FieldInfo

from cadre.bus.errors import CadreError


class InvalidSettings(CadreError):
    """A setting (a ``CADRE_*`` variable or a flag) whose value cannot be used."""

    code = "invalid_settings"


# Examples of the settings whose type alone does not make a useful one.
EXAMPLES: dict[str, str] = {
    "http_allow": "https://api.example.com/,https://data.example.org/v1/",
    "tool_modules": "mycompany.tools,othertools",
    "prohibited_tools": "fs.write,http.get",
    "approval_tools": "fs.write",
    "pools": '{"files": {"tools": ["fs.read", "fs.write"]}}',
    "approvers": '{"fs.write": ["alice", "bob"]}',
    "limits": '{"max_tasks": 50, "max_depth": 4}',
    "rate_limits": '{"anthropic": {"requests_per_minute": 50, "tokens_per_minute": 200000}}',
    "prices": '{"claude-": {"input": 3.0, "output": 15.0}}',
    "default_price": '{"input": 3.0, "output": 15.0}',
    "llm_fallback": "gemini,openai:gpt-4.1-mini",
    "nats_url": "nats://127.0.0.1:4222",
    "embedded_port": "4222",
    "metrics_port": "9100",
}
_PARSE_FAILURE = re.compile(r'error parsing value for field "(\w+)"')


def env_name(field: str, info: FieldInfo | None) -> str:
    """The environment variable a person sets for ``field`` (its first alias, if it has some)."""
    alias = info.validation_alias if info is not None else None
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return f"CADRE_{field.upper()}"


def _plain(annotation: Any) -> Any:
    """``annotation`` without ``None`` and ``Annotated`` wrappers."""
    while True:
        args = get_args(annotation)
        origin = get_origin(annotation)
        if origin in (Union, types.UnionType):
            rest = [a for a in args if a is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        elif hasattr(annotation, "__metadata__"):  # Annotated[X, ...]
            annotation = args[0]
        else:
            return annotation


def expected(field: str, info: FieldInfo | None) -> tuple[str, str]:
    """What ``field`` takes, in words, and an example value."""
    t = _plain(info.annotation) if info is not None else str
    origin = get_origin(t)
    default = info.default if info is not None else None
    if origin is Literal:
        values = [str(v) for v in get_args(t)]
        return f"one of {', '.join(values)}", values[0]
    if origin is list:
        return "a comma-separated list or a JSON list of strings", EXAMPLES.get(field, "a,b")
    if origin is dict or (isinstance(t, type) and issubclass(t, BaseModel)):
        return "a JSON object", EXAMPLES.get(field, "{}")
    if t is bool:
        return "true or false", "true"
    if t is int:
        return "an integer", EXAMPLES.get(field, str(default) if isinstance(default, int) else "10")
    if t is float:
        return "a number", str(default) if isinstance(default, float) and default > 0 else "2.5"
    if t is Path:
        return "a path", "/var/lib/cadre"
    if t is SecretStr:
        return "a key", "sk-..."
    return "text", EXAMPLES.get(field, str(default) if isinstance(default, str) else "...")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def explain(exc: Exception, fields: Mapping[str, FieldInfo], from_flags: Collection[str] = ()) -> str:
    """One line for a pydantic(-settings) error raised while loading settings."""
    by_alias = {env_name(f, i): f for f, i in fields.items()}
    problems: list[str] = []
    if isinstance(exc, ValidationError):
        errors = [(e["loc"], e["msg"], e.get("input")) for e in exc.errors()]
    else:
        m = _PARSE_FAILURE.search(str(exc))
        field = m.group(1) if m else "?"
        cause = exc.__cause__ or exc.__context__
        errors = [((field,), f"not valid JSON ({cause})" if cause else str(exc), None)]
    for loc, msg, value in errors:
        first = str(loc[0]) if loc else "?"
        field = by_alias.get(first, first)
        info = fields.get(field)
        where = f"the flag for {field}" if field in from_flags else env_name(field, info)
        inner = ".".join(str(p) for p in loc[1:])
        what, example = expected(field, info)
        secret = info is not None and _plain(info.annotation) is SecretStr
        got = "" if value is None or secret or isinstance(value, dict) else f"={_shown(value)}"
        at = f" (at {inner}{got})" if inner else got
        problems.append(
            f"{where}{at}: {msg[:1].lower()}{msg[1:]}; expected {what}, e.g. {env_name(field, info)}={example}"
        )
    return "; ".join(problems)
