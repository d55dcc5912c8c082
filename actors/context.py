"""The handler's window on the world: time, tools, the budget and the plan library.

Everything a handler learns from outside goes through its :class:`Context`, which records
each answer as an :class:`~bus.events.Effect`. The runtime stores the effects in an
``effects_recorded`` event in the same atomic batch as the handler's outputs, so a replay
can serve the same answers without calling anything.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import msgspec

from bus.events import Effect, Envelope
from bus.plan import ErrorInfo, Plan
from store.records import StoredEvent


class ToolFailure(Exception):
    """A tool call that failed, as the handler sees it (recorded either way)."""

    def __init__(self, tool: str, error: ErrorInfo, retryable: bool) -> None:
        super().__init__(f"{tool}: {error.code}: {error.message}")
        self.tool = tool
        self.error = error
        self.retryable = retryable


class Tools(Protocol):
    """Runs tools by name (the agents' toolbox)."""

    async def run(self, tool: str, inputs: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """The tool's output; raise ToolFailure when it fails."""
        ...


class Budget(Protocol):
    """Answers whether an LLM consultation may happen (the budget actor, over NATS)."""

    async def consult(self, request: Consultation) -> Decision: ...


class Library(Protocol):
    """Finds a known plan for a request (the plan library)."""

    async def search(self, request: str) -> LibraryHit | None: ...


class Consultation(msgspec.Struct, frozen=True, kw_only=True):
    """A request to the budget actor for one LLM consultation."""

    workflow_id: str
    kind: str  # plan | decompose | recover | interpret | decide | adapt
    provider: str | None = None
    model: str | None = None
    est_input_tokens: int = 0
    est_output_tokens: int = 0
    intelligence: str = "adaptive"
    mode: str = "adaptive"
    budget_usd: float | None = None
    cache_key: str | None = None


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """The budget actor's answer: ``granted`` with a reservation, or ``denied`` with a reason."""

    outcome: str  # granted | denied | cached
    reason: str = ""
    reservation_id: str | None = None
    cached_answer: Any = None


class LibraryHit(msgspec.Struct, frozen=True, kw_only=True):
    """The library's closest plan; the planner reuses it only when ``score >= threshold``."""

    name: str
    source: str
    score: float
    threshold: float
    plan: Plan


@dataclass(frozen=True, slots=True)
class Outside:
    """The live ports a context may call; None means "not available in this process"."""

    tools: Tools | None = None
    budget: Budget | None = None
    library: Library | None = None


def digest(value: Any) -> str:
    """A short stable digest of a JSON value (keys of effects, inputs of tool calls)."""
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.blake2b(raw, digest_size=8).hexdigest()


class Context:
    """A live context for one handler invocation."""

    def __init__(self, *, kind: str, stored: StoredEvent, now: datetime, outside: Outside) -> None:
        self.kind = kind
        self.stored = stored
        self.event: Envelope = stored.event
        self.workflow_id = stored.event.workflow_id
        self.effects: list[Effect] = []
        self._now = now
        self._outside = outside

    def now(self) -> datetime:
        """The time of this invocation (recorded as the ``at`` of what the handler emits)."""
        return self._now

    def _record(self, kind: str, key: str, value: Any, error: ErrorInfo | None, started: float) -> None:
        ms = round((time.perf_counter() - started) * 1000, 3)
        self.effects.append(Effect(kind=kind, key=key, value=value, error=error, ms=ms))

    async def call_tool(self, tool: str, inputs: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """Run a tool; its output (or failure) is recorded. Raises :class:`ToolFailure`."""
        key = f"{tool}:{digest(inputs)}"
        started = time.perf_counter()
        if self._outside.tools is None:
            failure = ToolFailure(tool, ErrorInfo(code="no_tools", message="this process runs no tools"), False)
            self._record("tool", key, {"retryable": False}, failure.error, started)
            raise failure
        try:
            out = await self._outside.tools.run(tool, inputs, idempotency_key)
        except ToolFailure as exc:
            self._record("tool", key, {"retryable": exc.retryable}, exc.error, started)
            raise
        self._record("tool", key, out, None, started)
        return out

    async def consult(self, request: Consultation) -> Decision:
        """Ask the budget whether a consultation may happen; no budget actor = denied."""
        started = time.perf_counter()
        if self._outside.budget is None:
            decision = Decision(outcome="denied", reason="no_budget_actor")
        else:
            decision = await self._outside.budget.consult(request)
        self._record(
            "budget", f"{request.kind}:{request.cache_key or ''}", msgspec.to_builtins(decision), None, started
        )
        return decision

    async def search_library(self, request: str) -> LibraryHit | None:
        """The best known plan for the request, or None; recorded with its score."""
        started = time.perf_counter()
        hit = await self._outside.library.search(request) if self._outside.library is not None else None
        self._record("library", digest(request), msgspec.to_builtins(hit), None, started)
        return hit
