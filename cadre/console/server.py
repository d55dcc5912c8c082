"""The console's web server (aiohttp): the page and its assets from ``cadre/static``, a JSON API,
and a stream of server-sent events that carries each changed workflow's row as the index sees it.

Security: the server listens on loopback unless told otherwise; every POST must carry the session's
token (``X-Cadre-Token``, which only a page of this origin can read from ``/api/session``) and, when
the browser sends one, an ``Origin`` of this host, so another site cannot make the browser act here;
approving, denying and cancelling need the console's approver key (:mod:`cadre.console.actions`).
The page renders every value as text (``textContent``), never as markup.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from cadre import __version__
from cadre.actors.budget import read_ledger
from cadre.actors.budget.report import report as budget_report
from cadre.actors.clock import utc_now
from cadre.bus.errors import CadreError
from cadre.bus.signing import Keyring, Signer
from cadre.bus.subjects import check_token
from cadre.console import actions, views
from cadre.console.feed import Feed
from cadre.console.index import Summary, WorkflowIndex
from cadre.log_scan import read_all
from cadre.settings import Settings
from cadre.store.filelog import export
from cadre.store.stats import stats, workflow_facts
from cadre.trust import find_keyring, signer_for
from cadre.wiring import Bus, open_bus

STATIC = Path(str(resources.files("cadre") / "static"))
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
SSE_FLUSH_S = 0.2  # changed rows go out at most this often per client
SSE_MAX_ROWS = 200  # rows per flush; past it the client is told to reload the list
_dumps = json.dumps


@dataclass
class Console:
    """What the handlers share."""

    settings: Settings
    bus: Bus
    index: WorkflowIndex
    feed: Feed
    keyring: Keyring | None
    signer: Signer | None
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    clients: set[Callable[[str], None]] = field(default_factory=set)
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    loopback: bool = True  # listening on loopback only: requests must name a loopback host


CONSOLE = web.AppKey("console", Console)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json")


def _refusal(exc: actions.ActionRefused) -> web.Response:
    return _json(exc.to_json(), exc.status)


def _console(request: web.Request) -> Console:
    return request.app[CONSOLE]


def _wf(request: web.Request) -> str:
    try:
        return check_token("workflow id", request.match_info["wf"])
    except CadreError as exc:
        raise web.HTTPBadRequest(text=_dumps({"error": exc.to_wire()}), content_type="application/json") from None


@web.middleware
async def _guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """A console on loopback answers requests that name a loopback host only (a page of another site
    whose name was made to point at 127.0.0.1 names its own). POSTs: this session's token and, when
    sent, this host as the origin. Every answer: no framing, no sniffing, and a policy that runs only
    this origin's scripts."""
    c = _console(request)
    if c.loopback and request.url.host not in LOOPBACK_NAMES:  # a DNS-rebinding page names another host
        return _json(
            {"error": {"code": "bad_host", "message": f"refused: host {request.host!r} is not this console"}}, 403
        )
    if request.method not in ("GET", "HEAD"):
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (f"http://{request.host}", f"https://{request.host}"):
            return _json({"error": {"code": "cross_origin", "message": f"refused: a request from {origin}"}}, 403)
        if not secrets.compare_digest(request.headers.get("X-Cadre-Token", ""), _console(request).token):
            return _json({"error": {"code": "bad_token", "message": "refused: no valid console token (reload)"}}, 403)
    resp = await handler(request)
    if resp.prepared:  # a stream (server-sent events) has sent its headers already
        return resp
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )
    resp.headers.setdefault("Cache-Control", "no-store")
    return resp


async def _page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "console.html")


async def _session(request: web.Request) -> web.Response:
    c = _console(request)
    return _json(
        {
            "token": c.token,
            "approver": c.signer is not None,
            "version": __version__,
            "stream": c.bus.log.stream,
            "signed": c.keyring is not None,
        }
    )


async def _workflows(request: web.Request) -> web.Response:
    c = _console(request)
    q = request.query
    try:
        limit = max(1, min(500, int(q.get("limit", "100"))))
        offset = max(0, int(q.get("offset", "0")))
    except ValueError:
        return _json({"error": {"code": "bad_query", "message": "limit and offset are whole numbers"}}, 400)
    total, rows = c.index.rows(utc_now(), state=q.get("state") or None, text=q.get("q"), limit=limit, offset=offset)
    return _json(
        {
            "total": total,
            "rows": rows,
            "counts": dict(c.index.counts()),
            "workflows": len(c.index.by_id),
            "seq": c.index.last_seq,
        }
    )


async def _records(c: Console, wf: str) -> list[Any]:
    return list(await c.bus.log.read_records(wf))


async def _workflow(request: web.Request) -> web.Response:
    c, wf = _console(request), _wf(request)
    records = await _records(c, wf)
    if not records:
        return _json({"error": {"code": "unknown_workflow", "message": f"no workflow {wf!r} in the log"}}, 404)
    page = await asyncio.to_thread(views.page, wf, records, c.keyring)
    return _json(page)


async def _value(request: web.Request) -> web.Response:
    c, wf = _console(request), _wf(request)
    q = request.query
    try:
        effect = int(q.get("effect", ""))
    except ValueError:
        return _json({"error": {"code": "bad_query", "message": "effect is a whole number"}}, 400)
    value = views.full_value(await _records(c, wf), c.keyring, q.get("event", ""), effect, q.get("part", "output"))
    return _json({"value": value})


async def _export(request: web.Request) -> web.Response:
    c, wf = _console(request), _wf(request)
    out = io.BytesIO()
    n = await export(c.bus.log, [wf], out, keyring=c.keyring)
    if n == 0:
        return _json({"error": {"code": "unknown_workflow", "message": f"no workflow {wf!r} in the log"}}, 404)
    return web.Response(
        body=out.getvalue(),
        content_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{wf}.jsonl"'},
    )


async def _replay(request: web.Request) -> web.Response:
    from cadre.replay_cli import replayer_for  # the handlers of every actor kind: loaded when asked

    c, wf = _console(request), _wf(request)
    records = await _records(c, wf)
    if not records:
        return _json({"error": {"code": "unknown_workflow", "message": f"no workflow {wf!r} in the log"}}, 404)
    replayer = dataclasses.replace(replayer_for(c.settings), keyring=c.keyring)
    result = await asyncio.to_thread(replayer.replay, records)
    return _json({"ok": result.ok, "lines": list(result.lines()), "result": result.to_json()})


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise actions.ActionRefused("bad_body", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise actions.ActionRefused("bad_body", "the body is a JSON object")
    return body


async def _decide(request: web.Request) -> web.Response:
    c, wf = _console(request), _wf(request)
    try:
        if c.signer is None:
            raise actions.no_approver(c.settings)
        body = await _body(request)
        answer = await actions.decide(
            c.bus.nc,
            c.settings,
            c.signer,
            wf,
            await _records(c, wf),
            c.keyring,
            body.get("step_id"),
            body.get("grant"),
            body.get("reason", ""),
        )
    except actions.ActionRefused as exc:
        return _refusal(exc)
    return _json(answer)


async def _cancel(request: web.Request) -> web.Response:
    c, wf = _console(request), _wf(request)
    try:
        body = await _body(request)
        answer = await actions.cancel(c.bus.nc, c.settings, c.signer, wf, body.get("reason", ""))
    except actions.ActionRefused as exc:
        return _refusal(exc)
    return _json(answer)


async def _submit(request: web.Request) -> web.Response:
    c = _console(request)
    try:
        body = await _body(request)
        answer = await actions.submit(c.bus.nc, c.settings, body.get("request"), body.get("dry_run", False))
    except actions.ActionRefused as exc:
        return _refusal(exc)
    return _json(answer)


async def _approvals(request: web.Request) -> web.Response:
    """Every step waiting for a decision, across the workflows the index holds as waiting."""
    c = _console(request)
    waiting = []
    for s in list(c.index.by_id.values()):
        if s.state != "awaiting_approval":
            continue
        records = await _records(c, s.workflow_id)
        page = await asyncio.to_thread(views.page, s.workflow_id, records, c.keyring)
        for w in page["waiting"]:
            reason = next((a["reason"] for a in page["approvals"] if a["step_id"] == w["step_id"]), "")
            waiting.append({**w, "workflow_id": s.workflow_id, "request": s.request, "reason": reason})
    return _json({"approver": c.signer is not None, "waiting": waiting})


async def _problems(request: web.Request) -> web.Response:
    c = _console(request)
    return _json(
        c.index.problems(utc_now(), c.settings.ui_stuck_after_s) | {"stuck_after_s": c.settings.ui_stuck_after_s}
    )


async def _budget(request: web.Request) -> web.Response:
    c = _console(request)
    try:
        entries = await read_ledger(c.bus.nc, c.settings.ledger_stream_name, timeout_s=c.settings.request_timeout_s)
    except Exception as exc:  # the ledger is the budget's and admin's: a reader may not be allowed it
        return _json({"error": {"code": "ledger_unreadable", "message": f"cannot read the ledger: {exc}"}}, 503)
    rep = budget_report(entries, None, today=utc_now().date(), daily_cap_usd=c.settings.budget_daily_usd)
    return _json({"ledger": c.settings.ledger_stream_name, "report": rep})


async def _stats(request: web.Request) -> web.Response:
    from cadre.stats_cli import parse_since

    c = _console(request)
    since_text = request.query.get("since", "").strip()
    try:
        since = parse_since(since_text, utc_now()) if since_text else None
    except CadreError as exc:
        return _json({"error": exc.to_wire()}, 400)
    by_wf = await read_all(c.bus.log)
    facts = await asyncio.to_thread(lambda: [workflow_facts(rs, c.keyring) for rs in by_wf.values()])
    return _json({"since": since.isoformat() if since else None, "stats": stats(facts, since)})


async def _events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``rows`` (the rows of the workflows that changed, batched) as they change."""
    c = _console(request)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    changed: set[str] = set()
    wake = asyncio.Event()

    def note(wf: str) -> None:
        changed.add(wf)
        wake.set()

    c.clients.add(note)
    try:
        await resp.write(b": connected\n\n")
        while not c.closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 15)
            if not changed:
                await resp.write(b": keep-alive\n\n")
                continue
            wake.clear()
            ids = list(changed)
            changed.clear()
            now = utc_now()
            payload: dict[str, Any]
            if len(ids) > SSE_MAX_ROWS:
                payload = {"reload": True, "seq": c.index.last_seq}
            else:
                rows = [c.index.by_id[wf].row(now) for wf in ids if wf in c.index.by_id]
                payload = {"rows": rows, "counts": dict(c.index.counts()), "seq": c.index.last_seq}
            await resp.write(b"event: rows\ndata: " + msgspec.json.encode(payload) + b"\n\n")
            await asyncio.sleep(SSE_FLUSH_S)
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        c.clients.discard(note)
    return resp


def app_for(console: Console) -> web.Application:
    app = web.Application(middlewares=[_guard], client_max_size=256 * 1024)
    app[CONSOLE] = console
    app.router.add_get("/", _page)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    app.router.add_get("/api/session", _session)
    app.router.add_get("/api/workflows", _workflows)
    app.router.add_post("/api/requests", _submit)
    app.router.add_get("/api/approvals", _approvals)
    app.router.add_get("/api/problems", _problems)
    app.router.add_get("/api/budget", _budget)
    app.router.add_get("/api/stats", _stats)
    app.router.add_get("/api/events", _events)
    app.router.add_get("/api/workflows/{wf}", _workflow)
    app.router.add_get("/api/workflows/{wf}/value", _value)
    app.router.add_get("/api/workflows/{wf}/export", _export)
    app.router.add_post("/api/workflows/{wf}/replay", _replay)
    app.router.add_post("/api/workflows/{wf}/cancel", _cancel)
    app.router.add_post("/api/workflows/{wf}/decide", _decide)

    async def closing(_: web.Application) -> None:
        console.closing.set()
        for note in list(console.clients):  # wake the event streams, which then end
            note("")

    app.on_shutdown.append(closing)
    return app


@asynccontextmanager
async def console_running(
    settings: Settings, *, host: str | None = None, port: int | None = None, bus: Bus | None = None
) -> AsyncIterator[Console]:
    """The console of ``settings``' cadre, listening on ``host:port`` (the settings' by default) once its
    index holds every workflow stored when it began; ``console.url`` says where. It connects as an
    approver when it holds an approver's key, else as a client (``bus``: a connection to use instead)."""
    signer = signer_for(settings, "approver")
    keyring, _ = find_keyring(settings)
    async with contextlib.AsyncExitStack() as stack:
        if bus is None:
            role = "approver" if signer is not None else "client"
            bus = await stack.enter_async_context(open_bus(settings, name="cadre-ui", role=role))
        index = WorkflowIndex(keyring)
        feed = Feed(bus.log, index)
        console = Console(settings, bus, index, feed, keyring, signer)

        def changed(s: Summary) -> None:
            for note in list(console.clients):
                note(s.workflow_id)

        index.listeners.append(changed)
        await feed.start()
        stack.push_async_callback(feed.stop)
        await feed.ready.wait()
        runner = web.AppRunner(app_for(console), access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        console.loopback = (host or settings.ui_host) in LOOPBACK_NAMES
        site = web.TCPSite(runner, host or settings.ui_host, settings.ui_port if port is None else port)
        try:
            await site.start()
        except OSError as exc:
            raise CadreError(
                f"the console cannot listen on {host or settings.ui_host}:{site.name.rsplit(':', 1)[-1]}: "
                f"{exc.strerror or exc} (another port: --port, CADRE_UI_PORT)"
            ) from None
        sockets = getattr(site._server, "sockets", None) or []  # the bound port when 0 asked for any
        bound = sockets[0].getsockname()[1] if sockets else settings.ui_port
        console.url = f"http://{host or settings.ui_host}:{bound}"
        yield console
