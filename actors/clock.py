"""The one place in ``actors/`` that reads the clock and draws random tokens.

Handlers never call these: the runtime reads the clock once per handler invocation and
hands the value to the handler through its context, where it is recorded (as the ``at``
of the events the handler emits) so a replay can serve it back.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)  # noqa: TID251 -- the runtime's clock, recorded in every event it stamps


def random_token(nbytes: int = 8) -> str:
    """A random hex token (workflow ids of requests without an idempotency key)."""
    return secrets.token_hex(nbytes)
