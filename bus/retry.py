"""Riding out a NATS outage: which errors are transient, and the backoff every NATS call of cadre uses.

A JetStream cluster that loses its stream leader elects another within seconds; until then its API
answers ``503`` (or nobody answers: "no responders", a timeout), and a client whose server died
reconnects to another node. None of that is a reason to give up a write or to end a process. Every
NATS call of the runtime, the state cache, the event log, the budget and the CLI goes through
:func:`retrying`: a transient error (:func:`is_transient`) is retried with exponential backoff and
jitter, for at most :attr:`RetryPolicy.bound_s` seconds in all (then the error is raised as it was);
any other error is raised at once.

An outage is logged once, not once per retry: the first transient error of an operation logs a
warning, its first success after that logs how long it lasted. Retries are counted by operation
(``cadre_nats_retries``, registered in each actor process's metrics registry).

Retrying is only safe for calls whose repetition cannot do anything twice: reads, consumer
creation, and the event log's appends, which carry ``Nats-Msg-Id`` and an expected last sequence
(a retry of an append that landed is recognised as ``already_stored``: ``store/jetstream.py``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final, TypeVar

import nats.errors
from nats.js.errors import APIError, ServiceUnavailableError
from prometheus_client import Counter

log = logging.getLogger("cadre.bus")

T = TypeVar("T")

# JetStream API errors of a cluster in transition (nats-server's errors.json): no meta leader, a
# stream or consumer without a current leader, or a request that reached a node that cannot serve it.
_TRANSIENT_ERR_CODES: Final = frozenset(
    {
        10008,  # JetStream system temporarily unavailable
        10009,  # JetStream cluster can not handle request (not the leader)
        10118,  # stream is offline
        10119,  # consumer is offline
    }
)

RETRIES: Final = Counter(
    "cadre_nats_retries",
    "NATS calls retried after a transient error (leader election, 503/no responders, timeout, reconnect), by operation",
    ["op"],
    registry=None,  # registered in each process's own registry (actors.metrics.Metrics.create)
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: pause ``n`` is drawn from [d/2, d] with
    d = min(max_delay_s, first_delay_s * 2**n); a call is retried for ``bound_s`` seconds in all."""

    bound_s: float = 60.0
    first_delay_s: float = 0.05
    max_delay_s: float = 2.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The pause before retry ``attempt`` (0 for the first retry)."""
        d = min(self.max_delay_s, self.first_delay_s * (1 << min(attempt, 30)))
        return d / 2 + rand() * d / 2


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a NATS or JetStream outage that passes (so the call may be repeated):
    a timeout, no responders, a 503, a cluster without a current leader, a connection reconnecting."""
    if isinstance(
        exc,
        nats.errors.TimeoutError
        | TimeoutError
        | nats.errors.NoRespondersError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.FlushTimeoutError
        | ConnectionError,
    ):
        return True
    if isinstance(exc, ServiceUnavailableError):  # nats-py raises it without a code for a 503 status message
        return True
    if isinstance(exc, APIError):
        return exc.code == 503 or exc.err_code in _TRANSIENT_ERR_CODES
    return False


class _Outages:
    """The operations failing right now, to log each outage once however many calls meet it.

    An outage of ``op`` opens with the first failed attempt and closes with the first success of
    an attempt that started after the latest failure. A failure of an attempt that started before
    the last close belongs to the outage that closed (it was slow to fail): it is counted, not logged.
    """

    def __init__(self) -> None:
        self._open: dict[str, _Outage] = {}
        self._closed_at: dict[str, float] = {}

    def failed(self, op: str, exc: BaseException, bound_s: float, attempt_started: float) -> None:
        RETRIES.labels(op).inc()
        now = time.monotonic()
        outage = self._open.get(op)
        if outage is not None:
            outage.last_failure = now
            outage.retries += 1
        elif attempt_started >= self._closed_at.get(op, -1.0):
            self._open[op] = _Outage(attempt_started, now)
            until = "until it is back" if bound_s == float("inf") else f"for up to {bound_s:g} s"
            log.warning("NATS unavailable for %s (%s); retrying with backoff %s", op, describe(exc), until)

    def ok(self, op: str, attempt_started: float) -> None:
        outage = self._open.get(op)
        if outage is not None and attempt_started >= outage.last_failure:
            del self._open[op]
            now = time.monotonic()
            self._closed_at[op] = now
            log.warning("NATS back for %s after %.1f s (%d retries)", op, now - outage.since, outage.retries)

    def gave_up(self, op: str, exc: BaseException, bound_s: float) -> None:
        log.error("NATS still unavailable for %s after %g s, giving up this call: %s", op, bound_s, describe(exc))


@dataclass(slots=True)
class _Outage:
    since: float
    last_failure: float
    retries: int = 1


_outages = _Outages()


def describe(exc: BaseException) -> str:
    """One line for an error of nats-py (several have an empty ``str``)."""
    if isinstance(exc, ServiceUnavailableError) and exc.code is None:
        return "JetStream 503: no responders (a stream or consumer without a leader?)"
    if isinstance(exc, APIError):
        return f"JetStream {exc.code or '?'}: {exc.description or type(exc).__name__}"
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


async def retrying(
    call: Callable[[], Awaitable[T]],
    op: str,
    policy: RetryPolicy,
    *,
    transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """``await call()``, again after each transient error, for up to ``policy.bound_s`` seconds in all.

    ``op`` names the operation in the log line and the metric ("event log append", "fetch planner").
    The last error is raised as it was when the bound is reached; a non-transient one at once.
    """
    started = time.monotonic()
    attempt = 0
    while True:
        attempt_started = time.monotonic()
        try:
            result = await call()
        except Exception as exc:
            if not transient(exc):
                raise
            left = policy.bound_s - (time.monotonic() - started)
            if left <= 0:
                _outages.gave_up(op, exc, policy.bound_s)
                raise
            _outages.failed(op, exc, policy.bound_s, attempt_started)
            await asyncio.sleep(min(policy.delay(attempt), left))
            attempt += 1
            continue
        _outages.ok(op, attempt_started)
        return result


class Backoff:
    """The same backoff for a loop that never gives up (an actor's fetch loop): ``await failed(exc)``
    after each transient error, ``ok()`` after each success; the outage is logged once."""

    def __init__(self, op: str, policy: RetryPolicy) -> None:
        self.op = op
        self.policy = policy
        self._attempt = 0
        self._since = time.monotonic()  # when the current attempt started (about: the previous one ended)

    async def failed(self, exc: BaseException) -> None:
        _outages.failed(self.op, exc, float("inf"), self._since)
        await asyncio.sleep(self.policy.delay(self._attempt))
        self._attempt += 1
        self._since = time.monotonic()

    def ok(self) -> None:
        if self._attempt:
            self._attempt = 0
            _outages.ok(self.op, self._since)
        self._since = time.monotonic()
