"""``cadre up --ui`` as a user runs it: the embedded server with its authorization, every actor, and the
console connected as the approver, reading the readers' mirror of the event stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

CADRE = [sys.executable, "-m", "cadre.cli"]


def test_up_with_the_console_serves_it_as_the_approver_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    env["CADRE_LLM_PROVIDER"] = "none"
    proc = subprocess.Popen(
        [*CADRE, "up", "--ui", "--ui-port", "0", "--data-dir", str(tmp_path / "d")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        line = ""
        while "cadre console:" not in line and time.monotonic() - started < 30:
            line = proc.stdout.readline()
            assert line, "cadre up ended before the console said where it is"
        url = line.split("cadre console: ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        assert "as an approver" in line

        async def check() -> None:
            async with aiohttp.ClientSession() as http:
                session: dict[str, Any] = await (await http.get(url + "/api/session")).json()
                assert session["approver"] is True
                assert session["signed"] is True
                sent = await http.post(
                    url + "/api/requests",
                    json={"request": "what is the weather on Mars", "dry_run": True},
                    headers={"X-Cadre-Token": session["token"]},
                )
                wf = (await sent.json())["workflow_id"]
                for _ in range(200):  # it reaches the list through the readers' mirror
                    rows = (await (await http.get(url + "/api/workflows")).json())["rows"]
                    if [r["state"] for r in rows if r["workflow_id"] == wf] == ["failed"]:
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError(f"{wf} never showed as failed (no plan): {rows}")
                assert rows[0]["dry_run"] is True

        asyncio.run(check())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdout, proc.stderr):
            if f is not None:
                f.close()
