"""The budget actor: gates every LLM consultation.

A service on ``<prefix>.budget.consult`` (core NATS request/reply, one queue group for all
replicas): a caller sends a :class:`Consultation` and gets a :class:`Decision`. While no
LLM provider is configured it denies every consultation with reason ``no_provider``, so
every caller takes its deterministic fallback. Callers record the decision (an effect) so
a replay sees the same answer. Caps, rate limits and the cache build on this service.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors.context import Consultation, Decision
from bus.subjects import Subjects

log = logging.getLogger("cadre.budget")

_decode = msgspec.json.Decoder(Consultation)
_encode = msgspec.json.Encoder()


def decide(request: Consultation, providers: frozenset[str]) -> Decision:
    """The gate's rule, pure: no provider configured → denied."""
    if not providers:
        return Decision(
            outcome="denied",
            reason="no_provider: no LLM provider is configured (set ANTHROPIC_API_KEY or GEMINI_API_KEY)",
        )
    if request.intelligence == "basic":
        return Decision(outcome="denied", reason="intelligence_level: 'basic' allows no consultation")
    return Decision(outcome="denied", reason="not_implemented: consultations are not enabled yet")


@asynccontextmanager
async def serve_budget(nc: NATS, subjects: Subjects, providers: frozenset[str] = frozenset()) -> AsyncIterator[None]:
    """Answer consultations until the block exits."""

    async def on_msg(m: Msg) -> None:
        try:
            request = _decode.decode(m.data)
        except msgspec.DecodeError as exc:
            await m.respond(_encode.encode({"error": {"code": "invalid_consultation", "message": str(exc)}}))
            return
        await m.respond(_encode.encode(decide(request, providers)))

    sub = await nc.subscribe(subjects.budget, queue="cadre-budget", cb=on_msg)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


class BudgetClient:
    """Asks the budget actor; when none answers, the consultation is denied (the safe default)."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float = 2.0) -> None:
        self._nc = nc
        self._subject = subjects.budget
        self._timeout = timeout
        self._decision = msgspec.json.Decoder(Decision)

    async def consult(self, request: Consultation) -> Decision:
        try:
            reply = await self._nc.request(self._subject, _encode.encode(request), timeout=self._timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            return Decision(outcome="denied", reason="budget_unavailable: no budget actor answered")
        try:
            return self._decision.decode(reply.data)
        except msgspec.DecodeError:
            return Decision(outcome="denied", reason=f"budget_error: {reply.data[:200]!r}")
