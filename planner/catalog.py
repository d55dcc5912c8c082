"""The tool catalog: what each tool is, takes, returns and may do.

The planner grounds plans in it (and lists it in prompts), the validator checks intents
against it, and agents run the implementations registered under the same names
(``actors/tools/``). A spec is data plus two pydantic models; it never runs anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from cadre.planner.safety import SafetyRule


class Safety(StrEnum):
    """What a tool may do to the world."""

    READ_ONLY = "read_only"  # no effect outside cadre; safe to retry and replay
    SIDE_EFFECT = "side_effect"  # changes something; runs with the step id as idempotency key
    PROHIBITED = "prohibited"  # never runs; the validator refuses any step that names it


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """One tool: its name (``family.verb``), description, input and output models, safety."""

    name: str
    description: str
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    safety: Safety = Safety.READ_ONLY
    requires_approval: bool = False
    timeout_s: float = 10.0
    docs: str = ""  # Markdown shipped with the tool (what it does, inputs, examples, pitfalls): the docs index's source
    # Default postconditions (CEL over ``inputs`` and ``output``, ``planner.conditions``): every call
    # of the tool is checked against them, on top of the step's own.
    postconditions: tuple[str, ...] = ()
    # The tool that undoes a completed call (a workflow with ``on_failure: compensate``, when it fails):
    # it takes ``CompensationInput`` (``planner.builtin_tools``). None: the tool's effect is not undone.
    compensation: str | None = None
    # The tool's safety rule (:mod:`planner.safety`): checked by the validator on the literal and on
    # the resolved inputs, and by the ToolBox before the implementation runs. None: schema only.
    rule: SafetyRule | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (for prompts, ``cadre tools`` and docs)."""
        described: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "safety": self.safety.value,
            "requires_approval": self.requires_approval,
            "input_schema": json_schema(self.input_model),
            "output_schema": json_schema(self.output_model),
        }
        if self.postconditions:
            described["postconditions"] = list(self.postconditions)
        return described


@functools.cache
def json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON Schema, generated once per model: pydantic takes about 0.7 ms a schema,
    and every plan prompt describes the whole catalog. Shared between callers: read only."""
    return model.model_json_schema()


class Catalog(Mapping[str, ToolSpec]):
    """An immutable set of tool specs by name."""

    def __init__(self, specs: Iterable[ToolSpec]) -> None:
        by_name: dict[str, ToolSpec] = {}
        for spec in specs:
            if spec.name in by_name:
                raise ValueError(f"tool {spec.name!r} is registered twice")
            by_name[spec.name] = spec
        self._specs = by_name
        self._allowed = tuple(sorted(n for n, s in by_name.items() if s.safety is not Safety.PROHIBITED))

    @property
    def allowed(self) -> tuple[str, ...]:
        """The names of the tools that may run (not prohibited), sorted."""
        return self._allowed

    def __getitem__(self, name: str) -> ToolSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def with_policy(self, *, prohibited: Iterable[str] = (), approval: Iterable[str] = ()) -> Catalog:
        """The same tools with some made prohibited or approval-gated (a deployment's policy)."""
        from dataclasses import replace

        banned, gated = set(prohibited), set(approval)
        return Catalog(
            replace(
                s,
                safety=Safety.PROHIBITED if s.name in banned else s.safety,
                requires_approval=s.requires_approval or s.name in gated,
            )
            for s in self._specs.values()
        )

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self._specs.values()]
