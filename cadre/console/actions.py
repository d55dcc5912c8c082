"""What the console's buttons send, as the approver (or client) it runs as: a request to the intake,
an approval decision or a cancel signed with the console's approver key and sent to the approvals
service (which checks the key, as for ``cadre approve``), a replay of the workflow's record.

Each returns a JSON-ready answer or raises :class:`ActionRefused` with a stable code and a message
for people, which the server turns into a 4xx answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from cadre.actors.clock import random_token, utc_now
from cadre.bus.approvals import ApprovalReply, CancelOrder, Decision, sign_cancel, sign_decision
from cadre.bus.errors import CadreError
from cadre.bus.signing import Keyring, Signer
from cadre.commands import ask_approvals, ask_intake
from cadre.settings import Settings
from cadre.store.authenticity import trusted_fold
from cadre.store.records import Record

REASON_MAX = 2000  # characters of a decision's reason
REQUEST_MAX = 20_000  # characters of a request typed in the console


class ActionRefused(Exception):
    """The console will not (or the service did not) do what was asked: ``code``, ``message``, ``status``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status

    def to_json(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def no_approver(settings: Settings) -> ActionRefused:
    return ActionRefused(
        "not_an_approver",
        "this console holds no approver key, so it cannot approve, deny or cancel: run `cadre ui` with an approver's "
        f"credentials (--creds approver.creds, or {settings.auth_dir / 'approver.creds'} for the local cadre)",
        403,
    )


async def submit(nc: NATS, settings: Settings, text: Any, dry_run: Any) -> dict[str, Any]:
    """Send a request in words to the intake; its answer (the workflow id) or a refusal."""
    if not isinstance(text, str) or not text.strip():
        raise ActionRefused("invalid_request", "type the request in words")
    if len(text) > REQUEST_MAX:
        raise ActionRefused("invalid_request", f"the request is longer than {REQUEST_MAX} characters")
    body: dict[str, Any] = {"request": text, "idempotency_key": "ui-" + random_token(12)}
    if dry_run is True:
        body["dry_run"] = True
    try:
        reply = await ask_intake(nc, settings, json.dumps(body).encode())
    except CadreError as exc:
        raise ActionRefused(exc.code, exc.message, 503) from None
    if "error" in reply:
        err = reply["error"]
        raise ActionRefused(str(err.get("code", "invalid_request")), str(err.get("message", "")))
    return reply


async def _ask(nc: NATS, settings: Settings, body: bytes, what: str, wf: str, refused: str) -> ApprovalReply:
    """Send a signed ``what`` (``decision``, ``cancel``) about ``wf`` to the approvals service and
    return its reply; an unreachable service is a 503, a refusal a 409 with its code (else ``refused``)."""
    try:
        data = await ask_approvals(nc, settings, body, what, wf)
    except CadreError as exc:
        raise ActionRefused(exc.code, exc.message, 503) from None
    reply = msgspec.json.decode(data, type=ApprovalReply)
    if reply.error is not None:
        err = reply.error
        raise ActionRefused(err.get("code", refused), f"the approvals service refused: {err.get('message', '')}", 409)
    return reply


async def decide(
    nc: NATS,
    settings: Settings,
    signer: Signer | None,
    wf: str,
    records: Sequence[Record],
    keyring: Keyring | None,
    step_id: Any,
    grant: Any,
    reason: Any,
) -> dict[str, Any]:
    """Approve or deny ``step_id`` of ``wf`` (as ``cadre approve``): signed with the console's approver
    key and checked by the approvals service, which records the decision under the key's name."""
    if signer is None:
        raise no_approver(settings)
    if not isinstance(step_id, str) or not isinstance(grant, bool):
        raise ActionRefused("invalid_decision", "a decision names the step (step_id) and grant (true or false)")
    if not isinstance(reason, str) or len(reason) > REASON_MAX:
        raise ActionRefused("invalid_decision", f"the reason is text of at most {REASON_MAX} characters")
    if not records:
        raise ActionRefused("unknown_workflow", f"no workflow {wf!r} in the log", 404)
    st = trusted_fold(wf, records, keyring).steps.get(step_id)
    if st is None or st.approval_request_id is None or st.status != "awaiting_approval":
        raise ActionRefused("not_awaiting_approval", f"step {step_id!r} of {wf} is not awaiting approval", 409)
    decision = Decision(
        workflow_id=wf, step_id=step_id, request_id=st.approval_request_id, grant=grant, reason=reason, at=utc_now()
    )
    reply = await _ask(nc, settings, sign_decision(signer, decision), "decision", wf, "approval_refused")
    return {"workflow_id": wf, "step_id": step_id, "decision": "granted" if grant else "denied", "by": reply.by}


async def cancel(nc: NATS, settings: Settings, signer: Signer | None, wf: str, reason: Any) -> dict[str, Any]:
    """Ask the approvals service to cancel ``wf`` (as ``cadre cancel``)."""
    if signer is None:
        raise no_approver(settings)
    if not isinstance(reason, str) or len(reason) > REASON_MAX:
        raise ActionRefused("invalid_cancel", f"the reason is text of at most {REASON_MAX} characters")
    order = CancelOrder(workflow_id=wf, reason=reason, at=utc_now())
    reply = await _ask(nc, settings, sign_cancel(signer, order), "cancel", wf, "cancel_refused")
    return {"workflow_id": wf, "cancel": "asked", "by": reply.by}
