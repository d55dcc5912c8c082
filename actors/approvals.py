"""The approvals service: the only writer of a person's ``approval_granted``/``approval_denied``
and ``cancel_requested`` (a signed cancel, :func:`cancel`) and ``redriven`` (a signed redrive of a dead
letter, :func:`redrive`): an approver's key may order either.

A queue-group responder on ``<prefix>.approvals``. For each signed decision
(:class:`bus.approvals.ApprovalRequest`) it checks, in order, and answers the first failure as
a structured error with nothing appended:

1. the body decodes (``invalid_request``);
2. the signature is an ``approver``'s key of the keyring, over this very decision
   (``not_an_approver`` / ``bad_signature``);
3. the decision was signed lately, not in the future (``stale_decision``, 5 minutes either way);
4. the workflow's step waits for approval, and for the request the decision answers
   (``no_such_step`` / ``not_awaiting_approval`` / ``answers_another_request``), judged on
   the events the keyring trusts (a forged ``approval_requested`` opens nothing);
5. this approver may approve the step's tool (``not_allowed_for_tool``: the deployment's
   approvers per tool; a tool not listed takes any approver).

Then it appends the event, signed with the service's own key, naming the approver as the
keyring names them (``by``) and their key (``key``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

import msgspec
from nats.aio.msg import Msg

from cadre.actors.clock import utc_now
from cadre.actors.redrive import NotRedrivable, to_redrive
from cadre.actors.service import serve
from cadre.bus.approvals import (
    APPROVAL_DOMAIN,
    CANCEL_DOMAIN,
    REDRIVE_DOMAIN,
    ApprovalReply,
    ApprovalRequest,
    CancelOrder,
    CancelRequest,
    Decision,
    RedriveOrder,
    RedriveRequest,
)
from cadre.bus.errors import CadreError, ConcurrencyConflict
from cadre.bus.events import ApprovalDenied, ApprovalGranted, CancelRequested, Envelope, Redriven, make_event
from cadre.bus.signing import Keyring
from cadre.store.authenticity import trusted_fold, verdict
from cadre.store.jetstream import JetStreamLog
from cadre.store.records import Record, StoredEvent
from cadre.store.state import WorkflowState

log = logging.getLogger("cadre.approvals")

FRESHNESS: Final = timedelta(minutes=5)
_request_decoder = msgspec.json.Decoder(ApprovalRequest)
_decision_decoder = msgspec.json.Decoder(Decision)
_cancel_request_decoder = msgspec.json.Decoder(CancelRequest)
_cancel_decoder = msgspec.json.Decoder(CancelOrder)
_redrive_request_decoder = msgspec.json.Decoder(RedriveRequest)
_redrive_decoder = msgspec.json.Decoder(RedriveOrder)
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class ApprovalPolicy:
    """Who may approve which tool: ``approvers[tool]`` names them; a tool not listed takes any approver."""

    approvers: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def allows(self, approver: str, tool: str) -> bool:
        names = self.approvers.get(tool)
        return names is None or approver in names


class Refused(CadreError):
    """A decision the service will not record; ``code`` says which check it failed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Verified:
    """A decision whose signature is an approver's: the decision and who gave it."""

    decision: Decision
    key: str
    name: str


def requester(headers: Mapping[str, str] | None) -> str | None:
    """The requester's user key as the server states it (``Nats-Request-Info``, set by the server for a
    request that crosses into the service's account, as approvers' requests do), else None."""
    raw = (headers or {}).get("Nats-Request-Info")
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    user = info.get("user") if isinstance(info, dict) else None
    return user if isinstance(user, str) and user.startswith("U") else None


def verify(body: bytes, keyring: Keyring, now: datetime, sent_by: str | None = None) -> Verified:
    """Checks 1 to 3: the body, the approver's signature and its freshness, and (when the server
    says who sent it) that the sender holds the signing key. Raises :class:`Refused`."""
    try:
        request = _request_decoder.decode(body)
        decision = _decision_decoder.decode(request.decision)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Refused("invalid_request", f"not a signed approval decision: {exc}") from None
    role = keyring.role_of(request.signer)
    if role != "approver":
        who = "a key the keyring does not know" if role is None else f"the {role} key"
        raise Refused("not_an_approver", f"the decision is signed by {who}; only approvers' keys may decide")
    if not keyring.verify_raw(request.signer, APPROVAL_DOMAIN + bytes(request.decision), request.sig):
        raise Refused("bad_signature", "the signature does not match the decision it came with")
    if sent_by is not None and sent_by != request.signer:
        raise Refused("not_the_signer", "the decision is signed with a key other than the sender's own")
    if abs(now - decision.at) > FRESHNESS:
        raise Refused(
            "stale_decision",
            f"the decision was signed at {decision.at.isoformat()}, more than {FRESHNESS} from now; sign it again",
        )
    return Verified(decision, request.signer, keyring.name_of(request.signer))


def judge(verified: Verified, state: WorkflowState, policy: ApprovalPolicy) -> ApprovalGranted | ApprovalDenied:
    """Checks 4 and 5 on the workflow's trusted state: the event to append. Raises :class:`Refused`."""
    d = verified.decision
    step = state.steps.get(d.step_id)
    if step is None:
        waiting = [s for s, x in state.steps.items() if x.status == "awaiting_approval"]
        raise Refused(
            "no_such_step",
            f"workflow {d.workflow_id} has no step {d.step_id!r}; awaiting approval: {', '.join(waiting) or 'none'}",
        )
    if step.status != "awaiting_approval":
        raise Refused("not_awaiting_approval", f"step {d.step_id} of {d.workflow_id} is {step.status}")
    if state.done or state.status == "cancelling":
        raise Refused("workflow_ended", f"workflow {d.workflow_id} is {state.status}: nothing waits for a decision")
    if step.approval_request_id is not None and step.approval_request_id != d.request_id:
        raise Refused(
            "answers_another_request",
            f"the decision answers request {d.request_id}, but step {d.step_id} waits on {step.approval_request_id}",
        )
    if not policy.allows(verified.name, step.step.tool):
        raise Refused("not_allowed_for_tool", f"{verified.name} may not approve tool {step.step.tool}")
    if d.grant:
        return ApprovalGranted(step_id=d.step_id, by=verified.name, key=verified.key, reason=d.reason)
    return ApprovalDenied(step_id=d.step_id, by=verified.name, key=verified.key, reason=d.reason)


BuildOn = Callable[[list[Record], WorkflowState], Envelope]
"""What a decision, cancel or redrive appends, built on the workflow's records and trusted state."""


async def _append_on_state(elog: JetStreamLog, keyring: Keyring, wf: str, build: BuildOn) -> str:
    """Append the event ``build`` makes from the workflow's records and trusted state (it raises
    :class:`Refused` when there is nothing to append); when the workflow moved on in between, build
    it again on the new state (up to 10 times). The appended event's id."""
    for _ in range(10):
        records = await elog.read_records(wf)
        if not records:
            raise Refused("no_such_workflow", f"no workflow {wf!r} in the log")
        state = trusted_fold(wf, records, keyring)
        event = build(records, state)
        try:
            await elog.append(wf, [event], expected_seq=state.last_seq, prev=state.last_hash)
        except ConcurrencyConflict:
            continue  # the workflow moved on: judge again on its new state
        return event.id
    raise Refused("workflow_busy", f"workflow {wf} kept changing; try again")


async def decide(
    elog: JetStreamLog,
    keyring: Keyring | None,
    policy: ApprovalPolicy,
    body: bytes,
    headers: Mapping[str, str] | None = None,
) -> ApprovalReply:
    """Verify, judge and append one decision; the reply to send."""
    try:
        if keyring is None:
            raise Refused(
                "no_keyring",
                "this deployment has no keyring, so no approver can be verified: make one with `cadre auth init`",
            )
        verified = verify(body, keyring, utc_now(), requester(headers))

        def build(_records: list[Record], state: WorkflowState) -> Envelope:
            return make_event(
                judge(verified, state, policy),
                workflow_id=state.workflow_id,
                actor="approvals",
                at=utc_now(),
                causation_id=verified.decision.request_id,
                index=int(not verified.decision.grant),
                basis=state.last_seq,
            )

        event_id = await _append_on_state(elog, keyring, verified.decision.workflow_id, build)
        return ApprovalReply(event_id=event_id, by=verified.name)
    except CadreError as exc:
        return ApprovalReply(error={"code": exc.code, "message": str(exc)})


@dataclass(frozen=True)
class VerifiedOrder:
    """A cancel or redrive whose signature is an approver's: the order and who gave it."""

    order: CancelOrder | RedriveOrder
    key: str
    name: str


def verify_order(body: bytes, keyring: Keyring, now: datetime, sent_by: str | None = None) -> VerifiedOrder:
    """As :func:`verify`, for a signed cancel or redrive: who may order them is who may approve (an
    ``approver``'s key of the keyring), since each stops or lets through what a workflow does.
    Raises :class:`Refused`."""
    try:
        request: CancelRequest | RedriveRequest
        order: CancelOrder | RedriveOrder
        if is_cancel(body):
            request = _cancel_request_decoder.decode(body)
            order, domain, what = _cancel_decoder.decode(request.cancel), CANCEL_DOMAIN, "cancel"
            signed = bytes(request.cancel)
        else:
            request = _redrive_request_decoder.decode(body)
            order, domain, what = _redrive_decoder.decode(request.redrive), REDRIVE_DOMAIN, "redrive"
            signed = bytes(request.redrive)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Refused("invalid_request", f"not a signed order: {exc}") from None
    role = keyring.role_of(request.signer)
    if role != "approver":
        who = "a key the keyring does not know" if role is None else f"the {role} key"
        raise Refused("not_an_approver", f"the {what} is signed by {who}; only approvers' keys may {what}")
    if not keyring.verify_raw(request.signer, domain + signed, request.sig):
        raise Refused("bad_signature", f"the signature does not match the {what} it came with")
    if sent_by is not None and sent_by != request.signer:
        raise Refused("not_the_signer", f"the {what} is signed with a key other than the sender's own")
    if abs(now - order.at) > FRESHNESS:
        raise Refused(
            "stale_decision", f"the {what} was signed at {order.at.isoformat()}, more than {FRESHNESS} from now"
        )
    return VerifiedOrder(order, request.signer, keyring.name_of(request.signer))


async def _on_order(
    elog: JetStreamLog,
    keyring: Keyring | None,
    body: bytes,
    headers: Mapping[str, str] | None,
    event_for: Callable[[VerifiedOrder, Keyring], BuildOn],
) -> ApprovalReply:
    """Verify one signed cancel or redrive and append the event ``event_for`` builds for it on the
    workflow's trusted state (:func:`_append_on_state`); the reply to send."""
    try:
        if keyring is None:
            raise Refused("no_keyring", "this deployment has no keyring, so no approver can be verified")
        verified = verify_order(body, keyring, utc_now(), requester(headers))
        event_id = await _append_on_state(elog, keyring, verified.order.workflow_id, event_for(verified, keyring))
        return ApprovalReply(event_id=event_id, by=verified.name)
    except CadreError as exc:
        return ApprovalReply(error={"code": exc.code, "message": str(exc)})


def _cancel_event(verified: VerifiedOrder, keyring: Keyring) -> BuildOn:
    """``cancel_requested`` for a verified cancel, refused when the workflow has ended or is being
    cancelled already."""
    wf = verified.order.workflow_id

    def build(_records: list[Record], state: WorkflowState) -> Envelope:
        if state.done:
            raise Refused("workflow_ended", f"workflow {wf} has ended ({state.status}): nothing to cancel")
        if state.cancel is not None:
            raise Refused("cancel_pending", f"workflow {wf} is being cancelled already (by {state.cancel.by})")
        return make_event(
            CancelRequested(reason=verified.order.reason, by=verified.name, key=verified.key),
            workflow_id=wf,
            actor="approvals",
            at=utc_now(),
            causation_id=None,
            index=f"cancel:{verified.key}:{verified.order.at.isoformat()}",
            basis=state.last_seq,
        )

    return build


async def cancel(
    elog: JetStreamLog, keyring: Keyring | None, body: bytes, headers: Mapping[str, str] | None = None
) -> ApprovalReply:
    """Verify one signed cancel and append ``cancel_requested`` for it; the reply to send."""
    return await _on_order(elog, keyring, body, headers, _cancel_event)


def _redrive_event(verified: VerifiedOrder, keyring: Keyring) -> BuildOn:
    """``redriven`` for a verified redrive: the workflow's dead letter, re-delivered
    (:func:`actors.redrive.to_redrive`)."""
    wf = verified.order.workflow_id

    def build(records: list[Record], state: WorkflowState) -> Envelope:
        trusted = [r for r in records if not isinstance(r, StoredEvent) or verdict(r, keyring).trusted]
        try:
            letter = to_redrive(wf, trusted, state)
        except NotRedrivable as exc:
            raise Refused(exc.code, str(exc)) from None
        assert letter.input is not None
        source, seq = letter.input.event, letter.input.seq
        again = source.data
        if isinstance(again, Redriven):  # a redrive that failed again: the input it re-delivered
            original: dict[str, object] = again.input
            seq, kind = again.input_seq, again.input_type
        else:
            original, kind = msgspec.json.decode(letter.input.data), source.type
        data = Redriven(
            handler_failed_id=letter.event.event.id,
            actor=letter.event.event.actor,
            input_seq=seq,
            input_type=kind,
            input=original,
            by=verified.name,
            key=verified.key,
            reason=verified.order.reason,
        )
        return make_event(
            data,
            workflow_id=wf,
            actor="approvals",
            at=utc_now(),
            causation_id=letter.event.event.id,
            index=f"redrive:{verified.key}:{verified.order.at.isoformat()}",
            basis=state.last_seq,
        )

    return build


async def redrive(
    elog: JetStreamLog, keyring: Keyring | None, body: bytes, headers: Mapping[str, str] | None = None
) -> ApprovalReply:
    """Verify one signed redrive and append ``redriven`` for the workflow's dead letter
    (:func:`actors.redrive.to_redrive`); the reply to send."""
    return await _on_order(elog, keyring, body, headers, _redrive_event)


def is_redrive(body: bytes) -> bool:
    """Whether a message to the approvals subject is a signed redrive."""
    try:
        _redrive_request_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


def is_cancel(body: bytes) -> bool:
    """Whether a message to the approvals subject is a signed cancel rather than a decision."""
    try:
        _cancel_request_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return True


@asynccontextmanager
async def serve_approvals(
    elog: JetStreamLog, keyring: Callable[[], Keyring | None], policy: ApprovalPolicy
) -> AsyncIterator[None]:
    """Answer signed decisions on ``<prefix>.approvals`` until the block exits (``elog`` signs as
    approvals). ``keyring`` is asked at every decision, so approvers added meanwhile count."""

    async def answer(m: Msg) -> bytes:
        if is_cancel(m.data):
            reply = await cancel(elog, keyring(), m.data, m.headers)
        elif is_redrive(m.data):
            reply = await redrive(elog, keyring(), m.data, m.headers)
        else:
            reply = await decide(elog, keyring(), policy, m.data, m.headers)
        if reply.error is not None:
            log.info("approval refused: %s", reply.error)
        return _encoder.encode(reply)

    async with serve(elog.nc, elog.subjects.approvals, "cadre-approvals", answer):
        yield
