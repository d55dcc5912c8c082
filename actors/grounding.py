"""What a prompt is grounded in, retrieved live: the :class:`~actors.context.Grounding` port.

For a ``plan`` call: the few most similar plans of the library that completed (example files
and learned workflows, ranked by the library's own similarity), the passages of
documentation most relevant to the request (:class:`~planner.docs_index.DocsIndex`, FTS5),
and, for a catalog above ``catalog_threshold`` tools, the tools the request needs (the same
index, plus the tools of the examples shown) instead of all of them. For an ``adapt`` call (a
re-plan): the passages and, for a large catalog, the tools again (the current plan's are listed
too). For a ``decompose`` call: the passages relevant to the task, its tool's own documentation
first and, for a large catalog, its tools; for ``steps`` (the rules' decomposition, no model):
the passages only, which the steps record. Every part is
bounded (examples and passages in characters, tools in number), so the prompt stays bounded
however large the library, the documentation or the catalog.

The answer is recorded (:class:`~bus.effects.Grounded`): a replay builds the prompt from the
record, whatever the library or the documents hold by then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import msgspec

from cadre.bus.effects import Example, Grounded
from cadre.planner.docs_index import DocsIndex, bounded
from cadre.planner.library import LibraryEntry, rank
from cadre.planner.words import tokens

__all__ = ["Grounder", "GroundingLimits"]


class Entries(Protocol):
    """The plan library's entries, brought up to date (:class:`~actors.library_source.LogLibrary`)."""

    async def refresh(self) -> None: ...

    @property
    def entries(self) -> list[LibraryEntry]: ...


@dataclass(frozen=True, slots=True)
class GroundingLimits:
    """How much grounding a prompt gets (from the ``CADRE_GROUNDING_*`` settings)."""

    examples: int = 3
    min_similarity: float = 0.2
    example_chars: int = 4000
    passages: int = 4
    passage_chars: int = 3000
    catalog_threshold: int = 40
    catalog_tools: int = 12


class Grounder:
    """Grounding from this process's documentation index and plan library."""

    def __init__(self, index: DocsIndex, library: Entries | None, limits: GroundingLimits) -> None:
        self.index = index
        self.library = library
        self.limits = limits

    async def ground(self, call: str, query: str, tool: str | None) -> Grounded:
        lim = self.limits
        examples = await self._examples(query) if call == "plan" and lim.examples > 0 else ()
        hits = self.index.search(query, limit=lim.passages, tool=tool) if lim.passages > 0 else []
        passages = tuple(bounded([h.passage for h in hits], lim.passage_chars))
        tools: tuple[str, ...] | None = None
        if call in ("plan", "adapt", "decompose") and len(self.index.tool_names) > lim.catalog_threshold:
            wanted = dict.fromkeys(self.index.tools(query, limit=lim.catalog_tools))
            for e in examples:  # a tool a similar past plan used is likely needed again
                wanted.update(dict.fromkeys(n.tool for n in e.plan.nodes if n.tool))
            if tool is not None:
                wanted[tool] = None
            known = set(self.index.tool_names)
            tools = tuple(sorted(t for t in wanted if t in known))
        return Grounded(call=call, query=Grounded.query_of(query), examples=examples, passages=passages, tools=tools)

    async def _examples(self, query: str) -> tuple[Example, ...]:
        if self.library is None or not query.strip():
            return ()
        await self.library.refresh()
        out: list[Example] = []
        left = self.limits.example_chars
        same = tokens(query)
        for m in rank(query, self.library.entries):
            if len(out) >= self.limits.examples or m.score < self.limits.min_similarity:
                break
            e = m.entry
            if tokens(e.request) == same:
                # the same request planned before: its prompt is the one the inference cache answers;
                # showing its plan would change the prompt, and every repeat would miss the cache
                continue
            size = len(e.request) + len(msgspec.json.encode(e.plan))
            if size > left:
                continue
            left -= size
            out.append(Example(name=e.name, source=e.source, request=e.request, plan=e.plan))
        return tuple(out)
