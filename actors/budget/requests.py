"""A budget request in flight and its answer: what the service holds between receiving a
consultation or a settlement and answering it, the bodies it answers with, and the metrics
of its decisions.

    Ask      a decoded Consultation, with what the inference cache holds for it (if looked up)
    Settle   a decoded Settlement; ``answered`` once its answer went out (before its ledger append)
    Answer   the body to send back for one request

An error body has the shape ``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from prometheus_client import Counter, Histogram

from cadre.actors.metrics import Metrics
from cadre.bus.ledger import CONSULTATION_KINDS, Consultation, Decision, Settlement

encode = msgspec.json.Encoder().encode
"""JSON of a wire struct (or of the entries of a ledger message)."""


@dataclass(slots=True)
class Ask:
    """A consultation waiting for its decision; ``started`` is ``time.perf_counter()`` at receipt."""

    msg: Msg
    request: Consultation
    cached: dict[str, Any] | None
    started: float


@dataclass(slots=True)
class Settle:
    """A settlement waiting for its answer. ``answered``: its answer went out — it does before
    the ledger append, as the caller needs only the cost — so a group decided again after a
    conflict does not send another."""

    msg: Msg
    request: Settlement
    started: float
    answered: bool = False


Request = Ask | Settle
"""A request in flight."""


@dataclass(slots=True)
class Answer:
    """What to send back: ``payload``; ``decision`` for the metrics of a consultation;
    ``cache``: write the settlement's value to the inference cache first."""

    request: Request
    payload: bytes
    decision: Decision | None = None
    cache: bool = False


def error_payload(code: str, message: str) -> bytes:
    """An error answer."""
    return encode({"error": {"code": code, "message": message}})


def unavailable(message: str) -> Decision:
    """A denial because the budget could not decide (decided by the caller, or by a budget
    that cannot write its ledger)."""
    return Decision(outcome="denied", reason="budget_unavailable", message=message)


async def respond(m: Msg, payload: bytes) -> None:
    """Answer ``m`` (when it asked for an answer); a connection that closes meanwhile is no error."""
    if m.reply:
        with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            await m.respond(payload)


async def answer_unavailable(r: Request, message: str, metrics: DecisionMetrics) -> None:
    """Answer that the budget cannot decide: a consultation is denied (``budget_unavailable``),
    a settlement gets a ``ledger_error`` (its reservation then expires at its worst case)."""
    if isinstance(r, Ask):
        decision = unavailable(message)
        metrics.count(r.request.kind, decision)
        await respond(r.msg, encode(decision))
    else:
        await respond(r.msg, error_payload("ledger_error", message))


class DecisionMetrics:
    """``cadre_budget_decisions{kind,outcome,reason}`` and ``cadre_budget_decision_seconds{operation}``
    (nothing when ``metrics`` is None), with the label children kept for the next request."""

    def __init__(self, metrics: Metrics | None) -> None:
        self._metrics = metrics
        self._decisions: dict[tuple[str, str, str], Counter] = {}
        self._seconds: dict[str, Histogram] = {}

    def count(self, kind: str, d: Decision) -> None:
        """Count a decision (a kind the budget does not know counts as ``other``)."""
        if self._metrics is None:
            return
        key = (kind if kind in CONSULTATION_KINDS else "other", d.outcome, d.reason)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self._metrics.budget_decisions.labels(*key)
        child.inc()

    def overrun(self, provider: str, kind: str) -> None:
        """Count a settlement that billed more than its reservation."""
        if self._metrics is not None:
            self._metrics.budget_overruns.labels(provider, kind if kind in CONSULTATION_KINDS else "other").inc()

    def observe(self, operation: str, started: float) -> None:
        """Time an answer to ``operation`` (``consult`` or ``settle``) from its receipt at ``started``."""
        if self._metrics is None:
            return
        child = self._seconds.get(operation)
        if child is None:
            child = self._seconds[operation] = self._metrics.budget_decision_seconds.labels(operation)
        child.observe(time.perf_counter() - started)
