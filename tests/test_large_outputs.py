"""Large tool outputs: above the hard cap (tool_output_max_bytes) a step fails once with output_too_large."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadre.bus.events import StepFailed
from tests.system_harness import cadre_running, settings_for

ROWS = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10000) SELECT x{pad} FROM n"


def query(pad: str) -> dict[str, Any]:
    sql = ROWS.format(pad=pad)
    return {
        "request": "ten thousand rows",
        "plan": {"nodes": [{"id": "big", "tool": "sql.query", "inputs": {"sql": sql, "max_rows": 10000}}]},
    }


async def test_outputs_under_and_over_the_cap(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        small = await h.run(query(""))  # 10 000 rows of one number: about 70 kB
        big = await h.run(query(", printf('%0100d', x) AS pad"))  # about 1.2 MB: over the default cap
        events = await h.events(big.workflow_id)
    assert small.status == "completed", small.failure
    assert small.tasks["big"].output is not None
    assert small.tasks["big"].output["row_count"] == 10_000
    failures = [e.event.data for e in events if isinstance(e.event.data, StepFailed)]
    assert len(failures) == 1  # once: no redelivery, no retry
    assert failures[0].error.code == "output_too_large"
    assert "the limit is 786432 (tool_output_max_bytes)" in failures[0].error.message
    assert big.status == "failed"
    assert big.dead_letters == 0
    assert "handler_failed" not in {e.event.type for e in events}
