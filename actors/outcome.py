"""What a handler returns: events to append, or a request to see the input again later."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cadre.bus.events import Event


@dataclass(frozen=True, slots=True)
class Defer:
    """Deliver the input again at ``until`` (a durable timer: JetStream redelivers it)."""

    until: datetime


Outcome = list[Event] | Defer
