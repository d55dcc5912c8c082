"""The actor-system commands of the CLI: up, actor, run, submit, approve, status, schema, tools."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from cadre import __version__, log_scan, workflow_list
from cadre.actors.budget import read_ledger
from cadre.actors.budget.report import report as budget_report
from cadre.actors.clock import random_token, utc_now
from cadre.actors.intake import submit
from cadre.actors.ping import ping_all
from cadre.actors.redrive import dead_letters
from cadre.actors.runtime import consumer_name, partition_consumer
from cadre.budget_report import render_report
from cadre.bus.approvals import (
    ApprovalReply,
    CancelOrder,
    Decision,
    RedriveOrder,
    sign_cancel,
    sign_decision,
    sign_redrive,
)
from cadre.bus.errors import CadreError
from cadre.bus.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    TERMINAL_TYPES,
)
from cadre.bus.request import request_schema
from cadre.bus.retry import is_transient, retrying
from cadre.bus.signing import Keyring, Signer
from cadre.bus.subjects import check_token
from cadre.progress import describe
from cadre.render import json_line
from cadre.safe_text import visible
from cadre.settings import Settings
from cadre.store.authenticity import trusted_fold, verdict
from cadre.store.jetstream import JetStreamLog
from cadre.store.records import Record, StoredEvent
from cadre.store.state import WorkflowState, fold, skip
from cadre.system import ACTOR_KINDS, catalog_for, run_system
from cadre.trust import find_keyring, signer_for, trust_for
from cadre.wiring import Bus, open_bus

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(CadreError):
    """The command line asks for something that cannot be done as asked."""

    code = "usage_error"


def _stop_on_signals(hard_stop_after: float | None = None) -> asyncio.Event:
    """An event set on SIGINT/SIGTERM. With ``hard_stop_after``, the first signal also arms a
    watchdog thread that ends the process that many seconds later if it is still running: a
    handler stuck in a thread or in CPU-bound code must not keep it from stopping (its inputs
    are unacknowledged, so JetStream redelivers them to another process)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if hard_stop_after is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return stop

    def on_signal(signum: int, frame: object) -> None:
        # A plain signal handler, not the loop's: it runs even while the loop is blocked.
        if not stop.is_set():
            _arm_hard_stop(hard_stop_after)
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    return stop


def _arm_hard_stop(after: float) -> None:
    def hard_stop() -> None:
        print(f"cadre: still running {after}s after the signal; stopping now", file=sys.stderr, flush=True)
        os._exit(EXIT_FAILED)

    timer = threading.Timer(after, hard_stop)
    timer.daemon = True
    timer.start()


def _say(text: str) -> None:
    """Print ``text``; a line break is kept, every other control character is shown as its
    escape (callers pass a recorded field through :func:`visible` to escape its line breaks too)."""
    print(visible(text, newlines=True), flush=True)


async def up(
    settings: Settings,
    kinds: tuple[str, ...],
    replicas: int,
    name: str,
    *,
    agent_pools: tuple[str | None, ...] | None = None,
    alongside: Callable[[str], contextlib.AbstractAsyncContextManager[str]] | None = None,
) -> int:
    """Run actor kinds until SIGINT/SIGTERM, then drain and stop (the agents serve ``agent_pools``:
    :func:`cadre.system.run_system`). ``alongside``: something more to run in the process while
    they do (``cadre up --ui``: the console), given the server's URL; it says what it is in a line."""
    stop = _stop_on_signals(settings.actor_drain_timeout_s + settings.stop_grace_s)
    # One process runs every kind (`cadre up`) as `node`, the union of the actor roles; a process of
    # one kind (`cadre actor KIND`) as that kind's role.
    role = kinds[0] if len(kinds) == 1 else "node"
    async with (
        open_bus(settings, name=name, role=role, service=True) as bus,
        run_system(bus, settings, kinds, replicas=replicas, agent_pools=agent_pools),
    ):
        where = "embedded server" if bus.server is not None else "NATS"
        if bus.server is not None and not bus.server.owned:
            where = f"embedded server already running (pid {bus.server.pid})"
        _say(f"cadre {__version__} up: {where} at {bus.url}")
        _say(f"  actors: {', '.join(f'{k} x{replicas}' if k != 'budget' else k for k in kinds)}")
        pools = [p for p in (agent_pools or (settings.agent_pool,)) if p is not None]
        if "agent" in kinds and pools:
            _say(f"  agent pools: {', '.join(pools)}")
        if "planner" in kinds:
            _say(f"  requests on {settings.subjects.requests}; events on {settings.subjects.events}")
        _say('  try: cadre submit "..." --wait    (Ctrl-C to stop)')
        if bus.server is not None:
            client = settings.auth_dir / "client.creds"
            _say(f"  other NATS clients: {bus.url} with the credentials in {client}")
        async with contextlib.AsyncExitStack() as extra:
            if alongside is not None:
                _say(await extra.enter_async_context(alongside(bus.url)))
            await stop.wait()
            print("cadre: draining and stopping", file=sys.stderr, flush=True)
    return EXIT_OK


def request_payload(
    text: str | None,
    plan_file: Path | None,
    *,
    budget: float | None,
    intelligence: str | None,
    mode: str | None,
    idempotency_key: str | None,
    dry_run: bool = False,
) -> bytes:
    """The JSON request the CLI sends, from its arguments (the intake validates it)."""
    body: dict[str, Any] = {}
    if plan_file is not None:
        try:
            loaded = json.loads(plan_file.read_text())
        except OSError as exc:
            raise UsageError(f"cannot read plan file {str(plan_file)!r}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise UsageError(f"plan file {plan_file} is not JSON: {exc}") from None
        if isinstance(loaded, dict) and "plan" in loaded:  # a library entry: {"name", "request", "plan"}
            body["plan"] = loaded["plan"]
            text = text or loaded.get("request")
        else:
            body["plan"] = loaded
    if text:
        body["request"] = text
    for key, value in (
        ("budget_usd", budget),
        ("intelligence", intelligence),
        ("mode", mode),
        ("idempotency_key", idempotency_key),
    ):
        if value is not None:
            body[key] = value
    if dry_run:
        body["dry_run"] = True
    return json.dumps(body).encode()


async def watch(log: JetStreamLog, wf: str, *, quiet: bool, keyring: Keyring | None = None) -> WorkflowState:
    """Print progress until the workflow ends; return its final state. Events ``keyring`` does
    not accept are shown flagged and count for nothing, as for the actors."""
    state = WorkflowState(workflow_id=wf)
    async with contextlib.aclosing(log.follow(wf)) as records:
        async for r in records:
            if not isinstance(r, StoredEvent):
                skip(state, r)
                if not quiet:
                    _say(visible(f"  #{r.seq} MALFORMED {r.subject}: {r.reason}"))
                continue
            checked = verdict(r, keyring)
            if not checked.trusted:
                skip(state, r)
                if not quiet:
                    _say(visible(f"  #{r.seq} {checked.status.upper()} {r.event.type} ignored: {checked.reason}"))
                continue
            fold(wf, [r], state)
            if not quiet:
                for line in describe(r.event):
                    _say(visible("  " + line))
            if r.event.type in TERMINAL_TYPES:
                break
    return state


def _summary(state: WorkflowState) -> dict[str, Any]:
    out: dict[str, Any] = {"workflow_id": state.workflow_id, "status": state.status, "events": state.events}
    if state.status == "completed":
        out["result"] = state.result
    if state.failure is not None:
        out["failure"] = {"reason": state.failure.code, "message": state.failure.message}
    if state.plan_source:
        out["plan_source"] = state.plan_source
    return out


async def _finish(bus: Bus, state: WorkflowState, as_json: bool, settings: Settings) -> int:
    if as_json:
        _say(json_line(_summary(state)))
    else:
        flag = "" if settings.nats_url is None else f" --nats {bus.url}"
        dry = " (a dry run: nothing was executed)" if state.request is not None and state.request.dry_run else ""
        _say("\n" + visible(f"workflow {state.workflow_id}: {state.status}{dry} ({state.events} events)"))
        _say(f"  events:  cadre events {state.workflow_id}{flag}")
        _say(f"  export:  cadre export {state.workflow_id}{flag} -o {state.workflow_id}.jsonl")
    return EXIT_OK if state.status == "completed" else EXIT_FAILED


async def run(settings: Settings, payload: bytes, as_json: bool) -> int:
    """One shot: server, every actor, submit, follow, print the result, stop."""
    async with (
        open_bus(settings, name="cadre-run", role="node") as bus,
        run_system(bus, settings, agent_pools=(None, *settings.pools)),
    ):
        trust = trust_for(settings, ("intake",))
        reply = await submit(bus.log.signed_by(trust.signer("intake")), payload)
        if "error" in reply:
            raise _request_error(reply["error"])
        wf = reply["workflow_id"]
        if not as_json:
            _say(f"workflow {wf} on {bus.url}")
        state = await watch(bus.log, wf, quiet=as_json, keyring=trust.keyring)
        return await _finish(bus, state, as_json, settings)


def _request_error(err: dict[str, str]) -> CadreError:
    message, path = err.get("message", ""), err.get("path", "$")
    exc = UsageError(message if path in message else f"{message} (at {path})")
    exc.code = err.get("code", "invalid_request")
    return exc


async def ask_intake(nc: NATS, settings: Settings, payload: bytes) -> dict[str, Any]:
    """Send a request to the intake and return its answer, through an outage.

    The request carries an idempotency key (a fresh one unless the caller gave one), so that asking
    again after an answer was lost (a timeout: the intake may be waiting out a leader election
    itself) returns the same workflow instead of starting a second. Timeouts are asked again for
    ``nats_retry_s``; "no responders" (no intake subscribed: one restarting, or this client
    reconnecting) for ``request_timeout_s``, then the command says what to start.
    """
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    key = None
    if isinstance(body, dict):
        if body.get("idempotency_key") is None:
            body["idempotency_key"] = "cli-" + random_token(12)
            payload = json.dumps(body).encode()
        key = body["idempotency_key"]
    started = time.monotonic()

    def transient(exc: BaseException) -> bool:
        if isinstance(exc, nats.errors.NoRespondersError):
            return time.monotonic() - started < settings.request_timeout_s
        return is_transient(exc)

    try:
        resp = await retrying(
            lambda: nc.request(settings.subjects.requests, payload, timeout=settings.request_timeout_s),
            "request to the intake",
            settings.retry_policy(),
            transient=transient,
        )
    except nats.errors.NoRespondersError:
        raise CadreError(
            f"no intake listens on {settings.subjects.requests}: start `cadre up` (or `cadre actor planner`)"
        ) from None
    except nats.errors.TimeoutError:
        again = f" with idempotency_key {key!r}" if isinstance(key, str) else " with an idempotency key"
        raise CadreError(
            f"no intake answered on {settings.subjects.requests} within {time.monotonic() - started:.0f} s: the "
            "request is stored and becomes a workflow when an intake runs (start `cadre up` or `cadre actor "
            f"planner`); send it again{again} to learn its workflow id"
        ) from None
    reply: dict[str, Any] = json.loads(resp.data)
    return reply


async def ask_approvals(nc: NATS, settings: Settings, signed: bytes, what: str, wf: str) -> bytes:
    """Send a signed order (a decision, a cancel, a redrive) to the approvals service; its answer.

    "No responders" (no service subscribed: one restarting, or this client reconnecting) is asked
    again with backoff for ``nats_retry_s``: nothing was delivered, so nothing can be done twice. A
    timeout is not asked again: the service may have recorded the order and lost only its answer,
    and a second order would then be refused; the error says how to look.
    """
    try:
        msg = await retrying(
            lambda: nc.request(settings.subjects.approvals, signed, timeout=settings.request_timeout_s),
            f"{what} to the approvals service",
            settings.retry_policy(),
            transient=lambda exc: isinstance(exc, nats.errors.NoRespondersError),
        )
    except nats.errors.NoRespondersError:
        raise CadreError(
            f"no approvals service answered on {settings.subjects.approvals}: is `cadre up` (or "
            "`cadre actor approvals`) running?"
        ) from None
    except nats.errors.TimeoutError:
        raise CadreError(
            f"the approvals service did not answer the {what} within {settings.request_timeout_s:g} s: it may "
            f"have been recorded all the same; see `cadre events {wf}` before sending it again"
        ) from None
    return bytes(msg.data)


async def submit_cmd(settings: Settings, payload: bytes, *, wait: bool, as_json: bool) -> int:
    async with open_bus(settings, name="cadre-submit") as bus:
        reply = await ask_intake(bus.nc, settings, payload)
        if "error" in reply:
            raise _request_error(reply["error"])
        wf = reply["workflow_id"]
        if not wait:
            _say(json_line(reply) if as_json else visible(wf))
            return EXIT_OK
        if not as_json:
            _say(f"workflow {wf}")
        state = await watch(bus.log, wf, quiet=as_json, keyring=find_keyring(settings)[0])
        return await _finish(bus, state, as_json, settings)


async def approve(settings: Settings, wf: str, step_id: str, *, deny: bool, reason: str) -> int:
    """Sign a decision with this user's approver key and send it to the approvals service.

    The service verifies the signature, that the key is an approver's allowed for the step's tool,
    and that the step still waits for the request answered here; it then records the decision
    under the name the keyring gives the key. Nothing is appended by this command.
    """
    signer = signer_for(settings, "approver")
    if signer is None:
        raise CadreError(
            f"no approver key: expected {settings.auth_dir / 'approver.creds'} (local) or an approver's "
            "creds file in --creds / CADRE_NATS_CREDS (made by `cadre auth init` or `cadre auth add-approver`)"
        )
    keyring, _ = find_keyring(settings)
    async with open_bus(settings, name="cadre-approve", role="approver") as bus:
        records = await bus.log.read_records(wf)
        if not records:
            raise UsageError(f"no workflow {wf!r} in the log (see `cadre workflows`)")
        state = trusted_fold(wf, records, keyring)
        st = state.steps.get(step_id)
        if st is None or st.approval_request_id is None:
            waiting = [s for s, x in state.steps.items() if x.status == "awaiting_approval"]
            raise UsageError(
                f"workflow {wf} has no step {step_id!r} awaiting approval; awaiting: {', '.join(waiting) or 'none'}"
            )
        decision = Decision(
            workflow_id=wf,
            step_id=step_id,
            request_id=st.approval_request_id,
            grant=not deny,
            reason=reason,
            at=utc_now(),
        )
        data = await ask_approvals(bus.nc, settings, sign_decision(signer, decision), "decision", wf)
        reply = msgspec.json.decode(data, type=ApprovalReply)
        if reply.error is not None:
            refused = CadreError(f"the approvals service refused: {reply.error.get('message', '')}")
            refused.code = reply.error.get("code", "approval_refused")
            raise refused
        _say(visible(f"{'denied' if deny else 'approved'} {step_id} of {wf} as {reply.by}"))
        return EXIT_OK


async def _order(settings: Settings, what: str, wf: str, body: Callable[[Signer], bytes]) -> ApprovalReply:
    """Sign an order (``body`` of this user's approver key) and send it to the approvals service;
    its reply, or a :class:`CadreError` with the service's code when it refuses."""
    signer = signer_for(settings, "approver")
    if signer is None:
        raise CadreError(
            f"no approver key: expected {settings.auth_dir / 'approver.creds'} (local) or an approver's "
            f"creds file in --creds / CADRE_NATS_CREDS: only approvers may {what}"
        )
    async with open_bus(settings, name=f"cadre-{what}", role="approver") as bus:
        data = await ask_approvals(bus.nc, settings, body(signer), what, wf)
    reply = msgspec.json.decode(data, type=ApprovalReply)
    if reply.error is not None:
        refused = CadreError(f"the approvals service refused: {reply.error.get('message', '')}")
        refused.code = reply.error.get("code", f"{what}_refused")
        raise refused
    return reply


async def cancel(settings: Settings, wf: str, *, reason: str) -> int:
    """Sign a cancel with this user's approver key and send it to the approvals service, which
    checks it as a decision (an approver's key, fresh, the workflow still going) and records
    ``cancel_requested``; the planner then ends the workflow ``cancelled`` (``actors.cancel``)."""
    order = CancelOrder(workflow_id=wf, reason=reason, at=utc_now())
    reply = await _order(settings, "cancel", wf, lambda signer: sign_cancel(signer, order))
    _say(visible(f"cancel of {wf} asked as {reply.by}"))
    return EXIT_OK


async def redrive(settings: Settings, wf: str, *, reason: str) -> int:
    """Sign a redrive with this user's approver key: the approvals service re-delivers the dead
    letter the workflow failed for to the actor that gave up on it (``actors.redrive``)."""
    order = RedriveOrder(workflow_id=wf, reason=reason, at=utc_now())
    reply = await _order(settings, "redrive", wf, lambda signer: sign_redrive(signer, order))
    _say(visible(f"redrove the dead letter of {wf} as {reply.by}"))
    return EXIT_OK


async def dead_letters_cmd(settings: Settings, as_json: bool) -> int:
    """List the dead letters (``handler_failed``) of every workflow: the actor, the input it gave up
    on, why, and whether it was redriven since; the keyring's view when there is one."""
    keyring, _ = find_keyring(settings)
    async with open_bus(settings, name="cadre-dead-letters", role="admin") as bus:
        counts = await bus.log.subject_counts()
        wfs = sorted(
            {p[0] for subject in counts if (p := settings.subjects.parse_event(subject)) and p[1] == "handler_failed"}
        )
        letters = []
        for wf in wfs:
            records = await bus.log.read_records(wf)
            trusted = [r for r in records if not isinstance(r, StoredEvent) or verdict(r, keyring).trusted]
            letters += dead_letters(wf, trusted, trusted_fold(wf, records, keyring))
    if as_json:
        _say(json_line({"dead_letters": [d.to_json() for d in letters]}))
        return EXIT_OK
    if not letters:
        _say("no dead letters")
    for d in letters:
        f = d.failed
        state = "redriven" if d.redriven else "dead"
        _say(
            visible(
                f"{d.workflow_id}  {state:<8} {d.event.event.actor} gave up on {f.input_type} (seq {f.input_seq}) "
                f"after {f.attempts} attempt(s): {f.error.code}: {f.error.message}"
            )
        )
        if d.input is not None:
            _say(visible(f"    input: {json_line(msgspec.to_builtins(d.input.event.data))[:300]}"))
        if not d.redriven:
            _say(f"    after a fix: cadre redrive {d.workflow_id}")
    return EXIT_OK


async def _workflow_states(
    settings: Settings, log: JetStreamLog, keyring: Keyring | None
) -> tuple[dict[str, Counter[str]], dict[str, str]]:
    """Each workflow's event types with their counts (from the stream's subject counts, no event
    read) and its state from them, folded from the trusted events instead where the keyring finds
    something suspect (:func:`_checked_states`): what ``cadre status`` and ``cadre workflows`` show."""
    per_wf: dict[str, Counter[str]] = {}
    for subject, n in (await log.subject_counts()).items():
        parsed = settings.subjects.parse_event(subject)
        if parsed is not None:
            per_wf.setdefault(parsed[0], Counter())[parsed[1]] += n
    states = {wf: workflow_state(c) for wf, c in per_wf.items()}
    if keyring is not None:
        states.update(await _checked_states(log, per_wf, keyring))
    return per_wf, states


async def status(settings: Settings, as_json: bool) -> int:
    keyring, _ = find_keyring(settings)
    async with open_bus(settings, name="cadre-status", role="admin") as bus:
        _, states = await _workflow_states(settings, bus.log, keyring)
        answers = await ping_all(bus.nc, settings.subjects)
        consumers: dict[str, dict[str, Any] | None] = {}
        # Each agent pool of the policy has its own consumer ("agent:files").
        durables = [(k, k, None) for k in ACTOR_KINDS] + [(f"agent:{p}", "agent", p) for p in settings.pools]
        for kind, actor_kind, pool in durables:
            name = consumer_name(settings.subject_prefix, actor_kind, pool)
            # With partitions, the kind's inputs are in its consumer per partition too: the sums.
            names = [name, *(partition_consumer(name, p) for p in range(settings.partitions))]
            try:
                infos = [await bus.log.js.consumer_info(settings.stream_name, n) for n in names]
                consumers[kind] = {
                    "pending": sum(ci.num_pending or 0 for ci in infos),
                    "in_flight": sum(ci.num_ack_pending or 0 for ci in infos),
                    "waiting": sum(ci.num_waiting or 0 for ci in infos),
                }
            except Exception:
                consumers[kind] = None
    by_state: Counter[str] = Counter(states.values())
    alive: Counter[str] = Counter()
    for a in answers:
        for k in a.get("kinds", []):
            alive[k] += int(a.get("replicas", 1)) if k != "budget" else 1
    report = {
        "workflows": dict(sorted(by_state.items())),
        "actors_alive": dict(alive),
        "consumers": consumers,
        "processes": answers,
    }
    if as_json:
        _say(json_line(report))
        return EXIT_OK
    _say(visible("workflows: " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "none")))
    _say(visible("actors alive: " + (", ".join(f"{k} x{v}" for k, v in sorted(alive.items())) or "none")))
    for kind, c in consumers.items():
        if c is not None:
            _say(f"  {kind:<10} backlog {c['pending']}, in flight {c['in_flight']}, fetching {c['waiting']}")
    return EXIT_OK


async def workflows(settings: Settings, *, state: str | None, limit: int | None, as_json: bool) -> int:
    """Recent workflows, newest first: state, request, start, duration (:mod:`cadre.workflow_list`).

    States come from the event types each workflow holds, as for ``cadre status`` (folded from the
    trusted events when the keyring finds something suspect); the start and end from the request and
    terminal events, read one each, and left blank when the keyring does not accept them."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit takes a count of 1 or more, not {limit}")
    keyring, _ = find_keyring(settings)
    async with open_bus(settings, name="cadre-workflows") as bus:
        per_wf, states = await _workflow_states(settings, bus.log, keyring)
        wanted = [wf for wf in per_wf if state is None or states[wf] == state]
        # Each workflow's request and end, in one pass per type (not a read per workflow).
        found: dict[str, dict[str, Record]] = {}
        for t in ("workflow_requested", *TERMINAL_TYPES):
            stored = sum(c[t] for c in per_wf.values())
            found[t] = await log_scan.last_of_type(bus.log, t, stored)

    def trusted(wf: str, event_type: str) -> StoredEvent | None:
        r = found[event_type].get(wf)
        return r if isinstance(r, StoredEvent) and verdict(r, keyring).trusted else None

    now = utc_now()
    rows = []
    for wf in wanted:
        end = (
            next((t for t in TERMINAL_TYPES if per_wf[wf][t]), None) if states[wf] in ("completed", "failed") else None
        )
        ended = trusted(wf, end) if end is not None else None
        rows.append(
            workflow_list.row(wf, states[wf], sum(per_wf[wf].values()), trusted(wf, "workflow_requested"), ended, now)
        )
    chosen = workflow_list.select(rows, state=state, limit=limit)
    if as_json:
        _say(json_line({"workflows": [workflow_list.row_json(r) for r in chosen]}))
    elif chosen:
        for line in workflow_list.lines(chosen):
            print(line, flush=True)
    else:
        _say("no workflows" + (f" in state {state}" if state else ""))
    return EXIT_OK


async def _checked_states(log: JetStreamLog, per_wf: dict[str, Counter[str]], keyring: Keyring) -> dict[str, str]:
    """The states that counting subjects could get wrong, decided on trusted events: a workflow whose
    end (its terminal event) is not signed by a party allowed to write it, or in which an actor
    refused a forged input, is folded from the events the keyring accepts."""

    async def suspect(wf: str, types: Counter[str]) -> bool:
        if types["forged_event"]:
            return True
        for t in TERMINAL_TYPES:
            if types[t]:
                end = await log.last_of_type(wf, t)
                return not isinstance(end, StoredEvent) or not verdict(end, keyring).trusted
        return False

    out: dict[str, str] = {}
    items = list(per_wf.items())
    for start in range(0, len(items), 64):
        chunk = items[start : start + 64]
        flags = await asyncio.gather(*(suspect(wf, types) for wf, types in chunk))
        for (wf, _), bad in zip(chunk, flags, strict=True):
            if bad:
                state = trusted_fold(wf, await log.read_records(wf), keyring)
                out[wf] = folded_state(state)
    return out


def folded_state(state: WorkflowState) -> str:
    """The name ``cadre status`` gives a folded state (as :func:`workflow_state` does from counts)."""
    if state.status in ("completed", "failed", "cancelled"):
        return state.status
    if any(s.status == "awaiting_approval" for s in state.steps.values()):
        return "awaiting_approval"
    return "running" if state.plan is not None else "requested"


def workflow_state(types: Counter[str]) -> str:
    """A workflow's state from the event types it holds (no fold needed)."""
    if types["workflow_completed"]:
        return "completed"
    if types["workflow_failed"]:
        return "failed"
    if types["workflow_cancelled"]:
        return "cancelled"
    if types["approval_requested"] > types["approval_granted"] + types["approval_denied"]:
        return "awaiting_approval"
    if types["plan_proposed"]:
        return "running"
    return "requested"


def schema(what: str) -> int:
    if what == "request":
        _say(json.dumps(request_schema(), indent=2))
        return EXIT_OK
    payloads = list(EVENT_TYPES.values())
    (env_schema, *payload_schemas), defs = msgspec.json.schema_components([_EnvelopeHead, *payloads])
    variants = []
    for name, ps in zip(EVENT_TYPES, payload_schemas, strict=True):
        head = dict(env_schema)
        variants.append(
            {
                "title": name,
                "allOf": [head, {"type": "object", "properties": {"type": {"const": name}, "data": ps}}],
            }
        )
    _say(json.dumps({"$defs": defs, "oneOf": variants, "title": "cadre event"}, indent=2))
    return EXIT_OK


class _EnvelopeHead(msgspec.Struct, kw_only=True):
    """The envelope's fields other than ``data`` (for the event schema)."""

    id: str
    type: str
    workflow_id: str
    causation_id: str | None
    actor: str
    at: str
    v: int = SCHEMA_VERSION
    prev: str = ""
    basis: int = 0


def tools(settings: Settings, as_json: bool) -> int:
    catalog = catalog_for(settings)
    if as_json:
        _say(json_line(catalog.describe()))
        return EXIT_OK
    for spec in catalog.values():
        flags = spec.safety.value + (", approval" if spec.requires_approval else "")
        _say(visible(f"{spec.name:<12} [{flags}] {spec.description.splitlines()[0]}"))
    return EXIT_OK


async def budget(settings: Settings, workflow_id: str | None, as_json: bool) -> int:
    """The budget's report from its ledger: spend, denials, cache hits, open reservations, today."""
    wf = check_token("workflow id", workflow_id) if workflow_id is not None else None
    malformed: list[int] = []
    async with open_bus(settings, name="cadre-budget", role="admin") as bus:
        entries = await read_ledger(
            bus.nc,
            settings.ledger_stream_name,
            timeout_s=settings.request_timeout_s,
            on_malformed=lambda seq, _: malformed.append(seq),
        )
    report = budget_report(entries, wf, today=utc_now().date(), daily_cap_usd=settings.budget_daily_usd)
    if malformed:
        skipped = ", ".join(map(str, malformed[:10])) + (" …" if len(malformed) > 10 else "")
        print(f"cadre: {len(malformed)} ledger message(s) are not entries, skipped: {skipped}", file=sys.stderr)
    if as_json:
        _say(json_line(report))
    else:
        for line in render_report(report, settings.ledger_stream_name):
            _say(visible(line))
    return EXIT_OK
