"""The web console (``cadre ui``) in a real headless Chromium (Debian's, driven by Playwright; nothing
is downloaded), over a whole cadre on the test nats-server: the list follows new workflows and their
states without a reload, the DAG shows each task's state, approving in the page lets a workflow
finish, a console without an approver key cannot approve, and recorded text renders inert."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright, expect

from cadre.actors.clock import utc_now
from cadre.bus import codec
from cadre.bus.events import WorkflowCompleted, make_event
from cadre.console.server import Console, console_running
from cadre.settings import Settings
from tests.system_harness import Harness, cadre_running, settings_for

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="needs Debian's chromium (make test installs it)"),
]
WAIT_MS = 10_000


def two_tasks(path: str) -> dict[str, Any]:
    """``first`` runs at once; ``save`` (fs.write) waits for an approver."""
    return {
        "plan": {
            "nodes": [
                {"id": "first", "tool": "test.echo", "inputs": {"value": "kept"}},
                {
                    "id": "save",
                    "depends_on": ["first"],
                    "tool": "fs.write",
                    "inputs": {"path": path, "content": "${first.value}"},
                },
            ]
        }
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def system(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Harness]:
    settings = settings_for(nats_url, tmp_path_factory.mktemp("console"), approval_tools=["fs.write"])
    async with cadre_running(settings) as h:
        yield h


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def console(system: Harness) -> AsyncIterator[Console]:
    async with console_running(system.settings, port=0) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def reader_console(system: Harness, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Console]:
    """A console of the same cadre whose credentials hold no approver key (its own data dir), checking
    events with the deployment's keyring."""
    s: Settings = system.settings
    bare = s.model_copy(update={"data_dir": tmp_path_factory.mktemp("reader"), "keyring": s.auth_dir / "keyring.json"})
    async with console_running(bare, port=0) as c:
        yield c


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(
            executable_path=CHROMIUM, args=["--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]
        )
        yield b
        await b.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(browser: Browser) -> AsyncIterator[Page]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900})
    pg = await ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    await ctx.close()
    assert errors == []


async def live(pg: Page, c: Console) -> None:
    """Wait until the page's event stream is connected, so nothing it should see is missed."""
    await expect(pg.locator("#live")).to_have_text("live", timeout=WAIT_MS)
    await asyncio.sleep(0)
    for _ in range(100):
        if c.clients:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the page never subscribed to the console's events")


async def test_the_list_shows_a_new_workflow_and_its_state_changes_live(
    system: Harness, console: Console, page: Page
) -> None:
    navigations: list[str] = []
    page.on("framenavigated", lambda f: navigations.append(f.url))
    await page.goto(console.url)
    await live(page, console)
    wf = (await system.submit(two_tasks("out/live.txt")))["workflow_id"]
    row = page.locator(f'tr[data-wf="{wf}"]')
    await expect(row).to_have_attribute("data-state", "awaiting_approval", timeout=WAIT_MS)
    await system.wait(wf, until="approval_requested")
    async with aiohttp.ClientSession() as http:
        token = (await (await http.get(console.url + "/api/session")).json())["token"]
        answer = await http.post(
            f"{console.url}/api/workflows/{wf}/decide",
            json={"step_id": "save.s1", "grant": True, "reason": "ok"},
            headers={"X-Cadre-Token": token},
        )
        assert answer.status == 200, await answer.text()
    await expect(row).to_have_attribute("data-state", "completed", timeout=WAIT_MS)
    await expect(row.locator(".state")).to_have_text("completed")
    assert navigations == [console.url + "/"]  # one load: every change came live


async def test_the_dag_shows_each_task_and_approving_in_the_page_completes_the_workflow(
    system: Harness, console: Console, page: Page
) -> None:
    wf = (await system.submit(two_tasks("out/page.txt")))["workflow_id"]
    await system.wait(wf, until="approval_requested")
    await page.goto(f"{console.url}/#/wf/{wf}")
    await live(page, console)
    await expect(page.locator('#dag g[data-task="first"]')).to_have_attribute("data-status", "completed")
    await expect(page.locator('#dag g[data-task="save"]')).to_have_attribute("data-status", "awaiting_approval")
    await expect(page.locator('#dag g[data-task="save"] text.status')).to_have_text("awaiting approval")
    await expect(page.locator("#wf-state .state")).to_have_text("awaiting_approval")
    waiting = page.locator('#wf-waiting .decision[data-step="save.s1"]')
    await waiting.locator("input").fill("checked in the console")
    await waiting.locator('button[data-action="approve"]').click()
    await expect(page.locator("#wf-state .state")).to_have_text("completed", timeout=WAIT_MS)
    await expect(page.locator('#dag g[data-task="save"]')).to_have_attribute("data-status", "completed")
    state = await system.wait(wf)
    assert state.status == "completed"
    assert state.steps["save.s1"].approved_by == "approver"
    assert (system.settings.workspace_dir / "out" / "page.txt").read_text() == "kept"
    await expect(page.locator("#wf-tools")).to_contain_text("fs.write")
    await expect(page.locator("#wf-integrity")).to_contain_text("chain intact")


async def test_a_console_without_an_approver_key_cannot_approve(
    system: Harness, reader_console: Console, page: Page
) -> None:
    wf = (await system.submit(two_tasks("out/never.txt")))["workflow_id"]
    await system.wait(wf, until="approval_requested")
    await page.goto(f"{reader_console.url}/#/wf/{wf}")
    approve = page.locator('#wf-waiting button[data-action="approve"]')
    await expect(approve).to_be_disabled()
    await expect(page.locator("#who")).to_contain_text("read-only")
    # The page's own token, sent as the page would: the server refuses, and says why.
    status, body = await page.evaluate(
        """async (wf) => {
            const s = await (await fetch('/api/session')).json();
            const r = await fetch(`/api/workflows/${wf}/decide`, {method: 'POST',
              headers: {'Content-Type': 'application/json', 'X-Cadre-Token': s.token},
              body: JSON.stringify({step_id: 'save.s1', grant: true, reason: ''})});
            return [r.status, await r.json()];
        }""",
        wf,
    )
    assert status == 403
    assert body["error"]["code"] == "not_an_approver"
    assert "approver" in body["error"]["message"]
    state = await system.wait(wf, until="approval_requested")
    assert state.steps["save.s1"].status == "awaiting_approval"
    assert not (system.settings.workspace_dir / "out" / "never.txt").exists()


async def test_a_post_without_the_token_or_from_another_origin_or_host_is_refused(console: Console) -> None:
    async with aiohttp.ClientSession() as http:
        token = (await (await http.get(console.url + "/api/session")).json())["token"]
        bare = await http.post(console.url + "/api/requests", json={"request": "x"})
        assert (bare.status, (await bare.json())["error"]["code"]) == (403, "bad_token")
        other = await http.post(
            console.url + "/api/requests",
            json={"request": "x"},
            headers={"X-Cadre-Token": token, "Origin": "http://evil.example"},
        )
        assert (other.status, (await other.json())["error"]["code"]) == (403, "cross_origin")
        rebound = await http.get(console.url + "/api/session", headers={"Host": "evil.example:8470"})
        assert (rebound.status, (await rebound.json())["error"]["code"]) == (403, "bad_host")


async def test_html_and_control_characters_in_a_request_render_as_inert_text(
    system: Harness, console: Console, page: Page
) -> None:
    text = 'report <img src=x onerror="window.pwned=1"><script>window.pwned=2</script>\x1b[31mred\x07 & done'
    wf = (await system.submit({"request": text}))["workflow_id"]
    await system.wait(wf)
    shown = 'report <img src=x onerror="window.pwned=1"><script>window.pwned=2</script>\\x1b[31mred\\x07 & done'
    await page.goto(console.url)
    cell = page.locator(f'tr[data-wf="{wf}"] td.request')
    await expect(cell).to_have_text(shown, timeout=WAIT_MS)
    await page.goto(f"{console.url}/#/wf/{wf}")
    await expect(page.locator("#wf-request")).to_have_text("Request: " + shown, timeout=WAIT_MS)
    assert await page.locator("main img, main script").count() == 0
    assert await page.evaluate("window.pwned") is None


async def test_the_page_puts_recorded_values_in_as_text_only(console: Console) -> None:
    """The script the console serves never hands data to an HTML parser (innerHTML, outerHTML,
    insertAdjacentHTML, document.write), and the page runs only this origin's scripts."""
    async with aiohttp.ClientSession() as http:
        resp = await http.get(console.url + "/static/console.js")
        script = await resp.text()
        policy = (await http.get(console.url + "/")).headers["Content-Security-Policy"]
    assert resp.status == 200
    assert "textContent" in script
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script
    assert "script-src 'self'" in policy


async def test_the_api_behind_the_other_pages(system: Harness, console: Console) -> None:
    """Approvals, replay, export, a whole value on demand, problems, stats and budget, over HTTP."""
    wf = (await system.submit(two_tasks("out/api.txt")))["workflow_id"]
    await system.wait(wf, until="approval_requested")
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> Any:
            resp = await http.get(console.url + path)
            assert resp.status == 200, await resp.text()
            return await resp.json()

        token = (await get("/api/session"))["token"]
        waiting = [w for w in (await get("/api/approvals"))["waiting"] if w["workflow_id"] == wf]
        assert [(w["step_id"], w["tool"]) for w in waiting] == [("save.s1", "fs.write")]
        assert "out/api.txt" in waiting[0]["inputs"]["text"]
        denied = await http.post(
            f"{console.url}/api/workflows/{wf}/decide",
            json={"step_id": "save.s1", "grant": False, "reason": "not this one"},
            headers={"X-Cadre-Token": token},
        )
        assert (await denied.json())["decision"] == "denied"
        assert (await system.wait(wf)).status == "failed"
        page = await get(f"/api/workflows/{wf}")
        echo = next(c for c in page["tool_calls"] if c["tool"] == "test.echo")
        whole = await get(f"/api/workflows/{wf}/value?event={echo['event_id']}&effect={echo['effect']}&part=output")
        assert whole["value"] == {"value": "kept"}
        replay = await http.post(f"{console.url}/api/workflows/{wf}/replay", json={}, headers={"X-Cadre-Token": token})
        assert (await replay.json())["ok"] is True
        export = await http.get(f"{console.url}/api/workflows/{wf}/export")
        assert export.headers["Content-Disposition"] == f'attachment; filename="{wf}.jsonl"'
        assert len((await export.read()).splitlines()) > page["totals"]["events"]  # a header, then the records
        stats = (await get("/api/stats"))["stats"]
        assert stats["workflows"]["total"] >= 1
        problems = await get("/api/problems")
        assert set(problems) >= {"dead_letters", "untrusted", "stuck"}
        assert "report" in await get("/api/budget")


async def test_problems_list_a_dead_letter_and_a_forged_end_which_the_list_does_not_believe(
    system: Harness, console: Console
) -> None:
    wf = (await system.submit(two_tasks("out/problem.txt")))["workflow_id"]
    await system.wait(wf, until="approval_requested")
    forged = make_event(
        WorkflowCompleted(result={"forged": True}), workflow_id=wf, actor="planner", at=utc_now(), index=99
    )
    js = system.bus.nc.jetstream()
    await js.publish(system.settings.subjects.event(wf, "workflow_completed"), codec.encode(forged))  # unsigned
    await js.publish(system.settings.subjects.event(wf, "step_ready"), b"{garbage")  # a dead letter
    assert (await system.wait(wf)).status == "failed"
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            problems = await (await http.get(console.url + "/api/problems")).json()
            dead = [x for x in problems["dead_letters"] if x["workflow_id"] == wf]
            if dead:
                break
            await asyncio.sleep(0.05)
        untrusted = [x for x in problems["untrusted"] if x["workflow_id"] == wf]
        rows = (await (await http.get(console.url + f"/api/workflows?q={wf}")).json())["rows"]
    assert [(x["input_type"], x["code"]) for x in dead] == [("step_ready", "malformed_event")]
    assert ("workflow_completed", "unsigned", "console") in {(x["type"], x["status"], x["seen_by"]) for x in untrusted}
    assert [(r["workflow_id"], r["state"]) for r in rows] == [(wf, "failed")]  # not the forged "completed"
