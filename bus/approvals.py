"""Approvals on the wire: a decision signed by the approver who gives it.

``cadre approve`` sends an :class:`ApprovalRequest` to ``<prefix>.approvals`` (request/reply);
the approvals service (:mod:`actors.approvals`) checks the signature against the keyring
(the key must be an ``approver``'s), that this approver may approve the step's tool, and that
the step still waits for this very ``approval_requested``; only then does it append the
``approval_granted``/``approval_denied`` event, signed with its own key, naming the approver.

The signature covers ``b"cadre-approval-v1\\n"`` + the exact bytes of ``decision``, so a
decision cannot be altered, and ``request_id`` ties it to one request of one step: a copy
replayed later answers a request that is no longer open.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Final

import msgspec

from cadre.bus.signing import Signer

APPROVAL_DOMAIN: Final = b"cadre-approval-v1\n"


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What the approver decides: grant (or deny) the step awaiting approval in ``workflow_id``."""

    workflow_id: str
    step_id: str
    request_id: str  # the id of the approval_requested event this answers
    grant: bool
    reason: str = ""
    at: datetime  # when the approver signed it; the service refuses a decision too old or from the future


class ApprovalRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A signed decision: ``decision`` is the JSON that ``sig`` (base64url) signs, by key ``signer``."""

    decision: msgspec.Raw
    signer: str
    sig: str


class ApprovalReply(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The service's answer: the event it appended and who it names, or a structured error."""

    event_id: str | None = None
    by: str | None = None
    error: dict[str, str] | None = None


def _signature(signer: Signer, domain: bytes, body: bytes) -> str:
    """The approver's signature of ``body`` under ``domain`` (one domain per kind of order, so a
    signed decision can never pass as a cancel), unpadded URL-safe base64."""
    return base64.urlsafe_b64encode(signer.sign_raw(domain + body)).rstrip(b"=").decode()


def sign_decision(signer: Signer, decision: Decision) -> bytes:
    """The request body for ``decision``, signed by the approver's key."""
    body = msgspec.json.encode(decision)
    sig = _signature(signer, APPROVAL_DOMAIN, body)
    return msgspec.json.encode(ApprovalRequest(decision=msgspec.Raw(body), signer=signer.public_key, sig=sig))


CANCEL_DOMAIN: Final = b"cadre-cancel-v1\n"


class CancelOrder(msgspec.Struct, frozen=True, kw_only=True):
    """What a person orders: stop ``workflow_id`` (``cadre cancel``)."""

    workflow_id: str
    reason: str = ""
    at: datetime  # when they signed it; refused when too old or from the future, as a decision


class CancelRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A signed cancel, sent to the approvals subject: ``cancel`` is the JSON that ``sig`` signs."""

    cancel: msgspec.Raw
    signer: str
    sig: str


def sign_cancel(signer: Signer, order: CancelOrder) -> bytes:
    """The request body for ``order``, signed by the approver's key (domain ``cadre-cancel-v1``)."""
    body = msgspec.json.encode(order)
    sig = _signature(signer, CANCEL_DOMAIN, body)
    return msgspec.json.encode(CancelRequest(cancel=msgspec.Raw(body), signer=signer.public_key, sig=sig))


REDRIVE_DOMAIN: Final = b"cadre-redrive-v1\n"


class RedriveOrder(msgspec.Struct, frozen=True, kw_only=True):
    """What a person orders after a fix: re-deliver the dead letter ``workflow_id`` failed for (``cadre redrive``)."""

    workflow_id: str
    reason: str = ""
    at: datetime


class RedriveRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A signed redrive, sent to the approvals subject: ``redrive`` is the JSON that ``sig`` signs."""

    redrive: msgspec.Raw
    signer: str
    sig: str


def sign_redrive(signer: Signer, order: RedriveOrder) -> bytes:
    """The request body for ``order``, signed by the approver's key (domain ``cadre-redrive-v1``)."""
    body = msgspec.json.encode(order)
    sig = _signature(signer, REDRIVE_DOMAIN, body)
    return msgspec.json.encode(RedriveRequest(redrive=msgspec.Raw(body), signer=signer.public_key, sig=sig))
