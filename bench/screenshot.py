"""The README's pictures of the console (docs/img/console.png, docs/img/console-workflow.png).

    .venv/bin/python bench/screenshot.py [--out DIR]     (or: make screenshot)

Runs a whole cadre in this process on a fresh bundled nats-server (no model: plans come from the
plan library of examples/plans or are given), with fs.write behind an approval; sends a few
requests (one that completes, one that waits for an approver, one that fails, a dry run), starts the
console and shoots its list and the waiting workflow's page in Debian's chromium (Playwright with
executable_path: nothing is downloaded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import bench_server, note
from playwright.async_api import async_playwright

from cadre.bus.auth import ensure_auth
from cadre.console.server import console_running
from cadre.settings import Settings
from cadre.store.records import StoredEvent
from cadre.system import run_system
from cadre.wiring import open_bus

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
PAGES = ["approvals", "problems", "budget", "stats"]
WAITING_PLAN: dict[str, Any] = {
    "request": "count the orders of 2024 and save the figure for the monthly report",
    "plan": {
        "nodes": [
            {
                "id": "orders",
                "description": "orders placed in 2024",
                "tool": "sql.query",
                "inputs": {"sql": "SELECT COUNT(*) AS orders FROM orders WHERE ordered_on LIKE '2024%'"},
            },
            {
                "id": "customers",
                "description": "customers",
                "tool": "sql.query",
                "inputs": {"sql": "SELECT COUNT(*) AS n FROM customers"},
            },
            {
                "id": "save",
                "description": "write the figures down",
                "depends_on": ["orders", "customers"],
                "tool": "fs.write",
                "inputs": {"path": "reports/orders_2024.txt", "content": "orders and customers of 2024"},
            },
        ],
        "output": "save",
    },
}
REQUESTS: list[dict[str, Any]] = [
    {"request": "how much did each customer spend in 2024"},
    {"request": "what is the weather on Mars <b>today</b>?"},
    {"request": "find the three customers who spent most in 2024 and write a report", "dry_run": True},
    WAITING_PLAN,
]


async def until(log: Any, wf: str, types: set[str], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        async for r in log.follow(wf):
            if isinstance(r, StoredEvent) and r.event.type in types:
                return


async def shoot(url: str, out: Path, pages: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="cadre-shot-") as tmp:
        settings = Settings(
            nats_url=url,
            data_dir=Path(tmp),
            llm_provider="none",
            plan_library=ROOT / "examples" / "plans",
            approval_tools=["fs.write"],
            stream_storage="memory",
        )
        await asyncio.to_thread(ensure_auth, settings.auth_dir, settings.auth_names())
        async with open_bus(settings, name="cadre-screenshot") as bus, run_system(bus, settings):
            ids = []
            for body in REQUESTS:
                reply = json.loads(
                    (await bus.nc.request(settings.subjects.requests, json.dumps(body).encode(), timeout=10)).data
                )
                ids.append(reply["workflow_id"])
                await until(bus.log, ids[-1], {"workflow_completed", "workflow_failed", "approval_requested"})
                await asyncio.sleep(0.05)
            note(f"workflows: {', '.join(ids)}")
            async with console_running(settings, port=0) as console, async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM)
                page = await browser.new_page(viewport={"width": 1280, "height": 640})
                await page.goto(console.url)
                await page.locator(f'tr[data-wf="{ids[-1]}"]').wait_for()
                await page.wait_for_timeout(300)
                await page.screenshot(path=str(out / "console.png"))
                await page.set_viewport_size({"width": 1280, "height": 1100})
                await page.goto(f"{console.url}/#/wf/{ids[-1]}")
                await page.locator("#dag g[data-task=save]").wait_for()
                await page.wait_for_timeout(300)
                await page.screenshot(path=str(out / "console-workflow.png"))
                for name in pages:  # --pages: the other pages too, for a look
                    await page.goto(f"{console.url}/#/{name}")
                    await page.wait_for_timeout(800)
                    await page.screenshot(path=str(out / f"console-{name}.png"), full_page=True)
                await browser.close()
            note(f"wrote {out / 'console.png'} and {out / 'console-workflow.png'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--pages", action="store_true", help="also shoot Approvals, Problems, Budget and Stats")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with bench_server(None, None) as url:
        asyncio.run(asyncio.wait_for(shoot(url, args.out, PAGES if args.pages else []), 120))
    sys.exit(0)


if __name__ == "__main__":
    main()
