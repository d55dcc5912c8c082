"""How the CLI shows records: one human line each, or one JSON object each (``--json``).

Both are safe to print: control characters in recorded text are shown, not sent
(``cadre/safe_text.py``).
"""

from __future__ import annotations

import base64
from typing import Any

import msgspec

from cadre.bus.codec import to_builtins
from cadre.bus.signing import Verdict
from cadre.safe_text import json_text, visible
from cadre.store.records import Malformed, Record, StoredEvent

_json = msgspec.json.Encoder()


def number(index: int, seq: int) -> str:
    """How ``cadre events`` and ``cadre audit`` number a workflow's records: ``#index`` (its place
    among the workflow's records, from 0, as the audit's sections and ``--verify`` name it) and
    ``seq`` (its stream sequence, what ``cadre events --at`` takes)."""
    return f"#{index:<4} seq {seq:<6}"


def record_json(r: Record, trust: Verdict | None = None, index: int | None = None) -> dict[str, Any]:
    """An event as its envelope plus ``seq`` and ``subject`` (with ``index``, its place among the
    workflow's records; and, when checked against a keyring, ``trust``: its verdict); a malformed
    message with its reason."""
    head: dict[str, Any] = {} if index is None else {"index": index}
    if isinstance(r, StoredEvent):
        out = {**head, "seq": r.seq, "subject": r.subject, **to_builtins(r.event)}
        if trust is not None:
            out["trust"] = {"status": trust.status, "role": trust.role, "reason": trust.reason or None}
        return out
    return {
        **head,
        "seq": r.seq,
        "subject": r.subject,
        "malformed": r.reason,
        "data_b64": base64.b64encode(r.data).decode("ascii"),
    }


def json_line(obj: Any) -> str:
    """``obj`` as one line of compact JSON, non-printable characters escaped (:func:`json_text`)."""
    return json_text(_json.encode(obj).decode())


def record_line(r: Record, index: int, width: int = 100, trust: Verdict | None = None) -> str:
    """``#index seq N  time  actor  type  data…`` for people (:func:`number`); malformed messages and
    events a keyring does not accept (``trust``) stand out."""
    if isinstance(r, Malformed):
        preview = r.data[:60].decode("utf-8", errors="replace")
        return visible(f"{number(index, r.seq)} MALFORMED  {r.subject}: {r.reason}  data={preview!r}")
    e = r.event
    data = _json.encode(e.data).decode()
    if len(data) > width:
        data = data[: width - 1] + "…"
    at = e.at.strftime("%H:%M:%S.%f")[:-3]
    flag = "" if trust is None or trust.trusted else f"{trust.status.upper()} (ignored by the actors: {trust.reason})  "
    return visible(f"{number(index, r.seq)} {flag}{at}  {e.actor:<10} {e.type:<20} {data}")
