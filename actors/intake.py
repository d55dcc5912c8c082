"""The intake: requests from any NATS client become workflows.

A queue-group subscriber on ``<prefix>.requests``. It validates the request (unknown fields,
wrong types, oversize, empty → a structured error reply and nothing appended), appends
``workflow_requested`` as the workflow's first event, and replies ``{"workflow_id": ...}``
when the request has a reply subject. With an ``idempotency_key`` the workflow id is
derived from the key, so a resubmission returns the same workflow instead of a new one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from nats.aio.msg import Msg

from cadre.actors.clock import random_token, utc_now
from cadre.actors.service import serve
from cadre.bus.errors import CadreError, ConcurrencyConflict
from cadre.bus.events import make_event
from cadre.bus.request import RequestError, parse_request
from cadre.store.jetstream import JetStreamLog

log = logging.getLogger("cadre.intake")
_json = msgspec.json.Encoder()


def workflow_id_for(idempotency_key: str | None, *, dry_run: bool = False) -> str:
    """A fresh id, or the key's own; a dry run's key names another workflow than the real run's,
    so that a dry run never stands in for (or blocks) the real run with the same key."""
    if idempotency_key is None:
        return "wf-" + random_token(8)
    key = idempotency_key + "\x1fdry-run" if dry_run else idempotency_key
    return "wf-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


async def submit(elog: JetStreamLog, data: bytes) -> dict[str, Any]:
    """Validate and append one request; the reply to send (``workflow_id`` or ``error``)."""
    try:
        requested = parse_request(data)
    except RequestError as exc:
        return {"error": exc.to_wire()}
    wf = workflow_id_for(requested.idempotency_key, dry_run=requested.dry_run)
    event = make_event(requested, workflow_id=wf, actor="intake", at=utc_now())
    try:
        result = await elog.append(wf, [event], expected_seq=0)
    except ConcurrencyConflict:
        # The workflow exists: the same idempotency key was submitted before.
        return {"workflow_id": wf, "existing": True}
    except CadreError as exc:
        return {"error": exc.to_wire()}
    return {"workflow_id": wf, "existing": True} if result.already_stored else {"workflow_id": wf}


@asynccontextmanager
async def serve_intake(elog: JetStreamLog) -> AsyncIterator[None]:
    """Take requests until the block exits."""

    async def answer(m: Msg) -> bytes:
        reply = await submit(elog, m.data)
        if "error" in reply:
            log.info("request refused: %s", reply["error"])
        return _json.encode(reply)

    async with serve(elog.nc, elog.subjects.requests, "cadre-intake", answer):
        yield
