"""Append a small recorded workflow to the event log and print it back.

This is the main job until the actors arrive: it shows the log doing its work (the
embedded nats-server, deterministic event ids, per-workflow optimistic concurrency,
reading back in order, the fold). Point it at a running server like every cadre command:
``--nats URL`` or ``CADRE_NATS_URL``; by default it uses the embedded server of ``./.cadre/``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
from datetime import UTC, datetime
from pathlib import Path

from bus.events import (
    Envelope,
    Event,
    PlanProposed,
    PlanValidated,
    StepCompleted,
    StepReady,
    StepsProposed,
    WorkflowCompleted,
    WorkflowRequested,
    make_event,
)
from bus.plan import Check, Plan, StepIntent, Task
from cadre.render import record_line
from cadre.settings import Settings
from cadre.wiring import open_bus
from store.state import fold


def demo_events(wf: str) -> list[list[Envelope]]:
    """The events of one small run, grouped as each actor would append them."""
    now = datetime.now(UTC)

    def emit(data: Event, actor: str, cause: Envelope | None, index: int = 0) -> Envelope:
        return make_event(
            data, workflow_id=wf, actor=actor, at=now, causation_id=cause.id if cause else None, index=index
        )

    task = Task(
        id="top",
        description="find the three customers who spent most in 2024",
        tool="sql.query",
        inputs={"sql": "select name, sum(total) from orders group by name order by 2 desc limit 3"},
    )
    request = emit(WorkflowRequested(request="find the three customers who spent most in 2024"), "intake", None)
    proposed = emit(PlanProposed(plan=Plan(nodes=(task,), output="top"), source="library"), "planner", request)
    validated = emit(
        PlanValidated(revision=1, checks=(Check(name="acyclic", passed=True, severity="info"),)), "validator", proposed
    )
    step = StepIntent(id="top.1", task_id="top", tool="sql.query", inputs=task.inputs)
    steps = emit(StepsProposed(task_id="top", steps=(step,)), "decomposer", validated)
    ready = emit(StepReady(step=step), "validator", steps)
    rows = [["Ada", 4120.5], ["Grace", 3980.0], ["Linus", 2210.75]]
    done = emit(
        StepCompleted(
            task_id="top", step_id="top.1", tool="sql.query", planned_tool="sql.query", output={"rows": rows}
        ),
        "agent",
        ready,
    )
    end = emit(WorkflowCompleted(result={"rows": rows}), "planner", done)
    return [[request], [proposed], [validated], [steps], [ready], [done], [end]]


async def main(settings: Settings) -> None:
    wf = "demo-" + secrets.token_hex(4)
    async with open_bus(settings, name="cadre-demo") as bus:
        print(f"NATS at {bus.url} (stream {settings.stream_name})")
        last = 0
        for group in demo_events(wf):
            last = (await bus.log.append(wf, group, expected_seq=last)).last_seq
        records = await bus.log.read_records(wf)
        print(f"\nworkflow {wf}: {len(records)} events\n")
        for r in records:
            print("  " + record_line(r, width=70))
        state = fold(wf, await bus.log.read(wf))
        print(f"\nstate: {state.status}, result: {state.result}")
        flag = "" if settings.nats_url is None else f" --nats {bus.url}"
        print(f"\nlook again with:  .venv/bin/cadre events {wf}{flag} [--json]")
        print(f"export it with:   .venv/bin/cadre export {wf}{flag} -o {wf}.jsonl")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--nats", metavar="URL")
    ap.add_argument("--data-dir", type=Path, metavar="DIR")
    a = ap.parse_args()
    asyncio.run(main(Settings.load(nats_url=a.nats, data_dir=a.data_dir)))
