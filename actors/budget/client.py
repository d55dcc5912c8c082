"""The callers' side of the budget actor: ask before an LLM call, settle after it.

A budget that does not answer means denied: :meth:`BudgetClient.consult` returns
``denied``/``budget_unavailable`` when nobody listens or nobody answers within the timeout, and
:meth:`BudgetClient.settle` returns None — the reservation then expires and is charged at its
worst case. "No responders" (no budget replica subscribed right now: one restarting, or this
client reconnecting to another node) is asked again with backoff within that timeout: a
consultation and a settlement are idempotent by their ids, so asking twice decides once.
"""

from __future__ import annotations

import logging
import time

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from cadre.actors.budget.requests import encode, unavailable
from cadre.bus.ledger import Consultation, Decision, Settled, Settlement
from cadre.bus.retry import RetryPolicy, retrying
from cadre.bus.subjects import Subjects

log = logging.getLogger("cadre.budget")


class _ErrorBody(msgspec.Struct, gc=False):
    code: str = "budget_error"
    message: str = ""


class _ErrorReply(msgspec.Struct, gc=False):
    error: _ErrorBody


_decision = msgspec.json.Decoder(Decision)
_settled = msgspec.json.Decoder(Settled)
_error_reply = msgspec.json.Decoder(_ErrorReply)


def _error_of(data: bytes) -> _ErrorBody:
    try:
        return _error_reply.decode(data).error
    except msgspec.DecodeError:
        return _ErrorBody(message=f"unreadable answer from the budget: {data[:200]!r}")


def _nobody(exc: BaseException) -> bool:
    return isinstance(exc, nats.errors.NoRespondersError)


class BudgetClient:
    """Asks the budget actor. When none answers, a consultation is denied (the safe default)."""

    def __init__(self, nc: NATS, subjects: Subjects, timeout: float = 2.0) -> None:
        self._nc = nc
        self._consult = subjects.budget
        self._settle = subjects.budget_settle
        self._timeout = timeout

    async def _ask(self, subject: str, payload: bytes) -> Msg:
        """A request, asked again while nobody listens, all within the client's timeout."""
        deadline = time.monotonic() + self._timeout

        async def ask() -> Msg:
            left = deadline - time.monotonic()
            if left <= 0:  # only "no responders" is asked again: it is still the answer
                raise nats.errors.NoRespondersError
            return await self._nc.request(subject, payload, timeout=left)

        return await retrying(ask, "budget request", RetryPolicy(bound_s=self._timeout), transient=_nobody)

    async def consult(self, request: Consultation) -> Decision:
        """The budget's decision; ``denied``/``budget_unavailable`` when nobody answers in time.
        An error answer (an invalid consultation) is a denial whose reason is the error code."""
        try:
            reply = await self._ask(self._consult, encode(request))
        except nats.errors.NoRespondersError:
            return unavailable(f"no budget actor listens on {self._consult}")
        except (nats.errors.TimeoutError, TimeoutError):
            return unavailable(f"no budget actor answered within {self._timeout:g} s")
        try:
            return _decision.decode(reply.data)
        except msgspec.DecodeError:
            err = _error_of(reply.data)
            return Decision(outcome="denied", reason=err.code, message=err.message)

    async def settle(self, settlement: Settlement) -> Settled | None:
        """What the call cost; None when nobody answered (or the budget refused the settlement:
        logged) — the reservation then expires and is charged at its worst case.

        The budget answers once the settlement is priced, before its ledger append is
        acknowledged; the reservation is released when it is (see ``docs/budget.md``)."""
        try:
            reply = await self._ask(self._settle, encode(settlement))
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError, TimeoutError):
            return None
        try:
            return _settled.decode(reply.data)
        except msgspec.DecodeError:
            err = _error_of(reply.data)
            log.error("budget refused settlement of %s: %s: %s", settlement.reservation_id, err.code, err.message)
            return None
