"""cadre beside durable peers on the pipeline bench's DAG: LangGraph with its SQLite checkpointer and
DBOS with its SQLite system database, in the same run as cadre and the raw nats-py ring.

    .venv/bin/python -m pip install -e '.[bench]'      # the peers (``make bench`` does it)
    .venv/bin/python bench/peers.py [--workflows N] [--concurrency C] [--runs R] [--latency-workflows M]
                                    [--langgraph-durability sync|async|exit] [--nats URL] [--data-dir DIR]

The workload is ``bench/pipeline.py``'s: the DAG ``a, b -> c`` of three instant tools (``a`` and ``b``
in parallel, ``c`` after both, reading ``a``'s output), N workflows with at most C in flight, then M
one at a time (unloaded latency), R runs, medians. cadre and the raw ring are measured by
``pipeline.main`` itself (imported, not copied: same setup, warm-up and figures), then each peer in the
same process, with the same driver (``pipeline.Driver``), N, C, M and R, its order rotating per run
after a warm-up.

Durability, as each side runs here:

* **cadre**: every event appended to a JetStream file-storage stream (the server's default sync: the
  stream's writes are flushed every 2 minutes, its acks come after the write to the OS; replicated
  streams make durability a quorum's) and signed, before the next actor sees it.
* **raw**: awaited ``js.publish`` to a file-storage stream per hop, same server.
* **LangGraph**: ``AsyncSqliteSaver`` (langgraph-checkpoint-sqlite, aiosqlite) on one file, WAL journal,
  SQLite's ``synchronous`` as the saver leaves it (reported); ``durability="sync"`` by default: each
  step's checkpoint is written before the next step starts (``async``: while it runs; ``exit``: only at
  the end).
* **DBOS**: ``@DBOS.workflow`` with three ``@DBOS.step`` (``a`` and ``b`` gathered), SQLite system
  database (``sqlite:///…``): each step's output is recorded before the workflow goes on.

One JSON object goes to stdout (``pipeline`` holds pipeline.main's whole result), a table to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import operator
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pipeline
from _common import bench_server, note, percentile
from dbos import DBOS
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph

PEERS = ("langgraph", "dbos")


async def echo(value: str) -> str:
    """The peers' instant tool: returns its input at once (``bench.echo``'s behaviour)."""
    return value


# -- LangGraph -----------------------------------------------------------------------------------


class DagState(TypedDict):
    out: Annotated[dict[str, str], operator.or_]  # a and b write in the same superstep: merged


async def _lg_a(state: DagState) -> dict[str, Any]:
    return {"out": {"a": await echo("alpha")}}


async def _lg_b(state: DagState) -> dict[str, Any]:
    return {"out": {"b": await echo("beta")}}


async def _lg_c(state: DagState) -> dict[str, Any]:
    return {"out": {"c": await echo(state["out"]["a"])}}


class LangGraphSide:
    """The DAG as a LangGraph ``StateGraph``, checkpointed to SQLite; one thread per workflow."""

    def __init__(self, saver: AsyncSqliteSaver, durability: str) -> None:
        g = StateGraph(DagState)
        g.add_node("a", _lg_a)
        g.add_node("b", _lg_b)
        g.add_node("c", _lg_c)
        g.add_edge(START, "a")
        g.add_edge(START, "b")
        g.add_edge("a", "c")
        g.add_edge("b", "c")
        g.add_edge("c", END)
        self.graph = g.compile(checkpointer=saver)
        self.saver = saver
        self.durability = durability
        self.driver = pipeline.Driver()

    async def pragmas(self) -> dict[str, Any]:
        found = {}
        for name in ("journal_mode", "synchronous"):
            async with self.saver.conn.execute(f"PRAGMA {name}") as cur:
                row = await cur.fetchone()
                found[name] = row[0] if row else None
        return found

    async def one(self, wf: str) -> None:
        result = await self.graph.ainvoke(
            {"out": {}},
            {"configurable": {"thread_id": wf}},
            durability=self.durability,  # type: ignore[arg-type]
        )
        if result["out"].get("c") != "alpha":
            raise RuntimeError(f"langgraph workflow {wf} ended with {result!r}")
        self.driver.completed(wf)

    async def run(self, label: str, n: int, concurrency: int) -> pipeline.Run:
        ids = [f"lg-{label}-{i}" for i in range(n)]
        return await self.driver.run(ids, lambda i: self.one(ids[i]), concurrency, pipeline.run_timeout(n))


# -- DBOS ----------------------------------------------------------------------------------------


@DBOS.step()
async def _dbos_step(value: str) -> str:
    return await echo(value)


@DBOS.workflow()
async def _dbos_dag() -> str:
    a, _b = await asyncio.gather(_dbos_step("alpha"), _dbos_step("beta"))
    return await _dbos_step(a)


class DbosSide:
    """The DAG as a DBOS workflow of three steps (``a`` and ``b`` gathered), on a SQLite system database."""

    def __init__(self) -> None:
        self.driver = pipeline.Driver()

    async def one(self, wf: str) -> None:
        handle = await DBOS.start_workflow_async(_dbos_dag)
        result = await handle.get_result()
        if result != "alpha":
            raise RuntimeError(f"dbos workflow {wf} ended with {result!r}")
        self.driver.completed(wf)

    async def run(self, label: str, n: int, concurrency: int) -> pipeline.Run:
        ids = [f"dbos-{label}-{i}" for i in range(n)]
        return await self.driver.run(ids, lambda i: self.one(ids[i]), concurrency, pipeline.run_timeout(n))


# -- the bench -----------------------------------------------------------------------------------


async def measure_peers(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every run of each peer (loaded, then unloaded), the order rotating per run; their figures."""
    n, c, m = args.workflows, args.concurrency, args.latency_workflows
    DBOS(
        config={
            "name": "cadre-bench-peers",
            "system_database_url": f"sqlite:///{work / 'dbos.sqlite'}",
            "log_level": "WARNING",
        }
    )
    DBOS.launch()
    try:
        async with AsyncSqliteSaver.from_conn_string(str(work / "langgraph.sqlite")) as saver:
            lg = LangGraphSide(saver, args.langgraph_durability)
            db = DbosSide()
            sides: dict[str, Callable[[int], Awaitable[pipeline.Run]]] = {
                "langgraph": lambda r: lg.run(f"m{r}", n, c),
                "dbos": lambda r: db.run(f"m{r}", n, c),
                "langgraph_unloaded": lambda r: lg.run(f"u{r}", m, 1),
                "dbos_unloaded": lambda r: db.run(f"u{r}", m, 1),
            }
            warm = min(n, 50)
            note(f"peers warm-up: {warm} workflows each")
            await lg.run("warm", warm, c)
            await db.run("warm", warm, c)
            pragmas = await lg.pragmas()
            runs: dict[str, list[pipeline.Run]] = {name: [] for name in sides}
            names = list(sides)
            for r in range(args.runs):
                k = r % len(names)
                for name in names[k:] + names[:k]:
                    runs[name].append(await sides[name](r))
                figures = [
                    f"{name} {len(lat) / s:.0f} wf/s p50 {percentile(lat, 50) * 1000:.1f} ms"
                    for name in PEERS
                    for s, lat in runs[name][-1:]
                ]
                note(f"  peers run {r + 1}/{args.runs}: " + ", ".join(figures))
    finally:
        DBOS.destroy()
    return {
        "langgraph": {
            **pipeline.summary(runs["langgraph"], 3),
            "unloaded": pipeline.unloaded(runs["langgraph_unloaded"]),
            "durability": f"AsyncSqliteSaver, durability={args.langgraph_durability!r}, SQLite "
            f"journal_mode={pragmas['journal_mode']}, synchronous={pragmas['synchronous']}",
        },
        "dbos": {
            **pipeline.summary(runs["dbos"], 3),
            "unloaded": pipeline.unloaded(runs["dbos_unloaded"]),
            "durability": "SQLite system database (every step's output recorded before the workflow goes on)",
        },
    }


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """cadre's and the raw ring's figures over each peer's (throughput: higher is better for the first;
    p50: lower is better for the first)."""
    pipe = result["pipeline"]
    sides = {
        "cadre": (
            pipe["cadre"]["workflows_per_s"],
            pipe["cadre"]["p50_ms"],
            pipe["unloaded_latency"]["cadre"]["p50_ms"],
        ),
        "raw": (pipe["raw"]["workflows_per_s"], pipe["raw"]["p50_ms"], pipe["unloaded_latency"]["raw"]["p50_ms"]),
    }
    for peer in PEERS:
        p = result["peers"][peer]
        sides[peer] = (p["workflows_per_s"], p["p50_ms"], p["unloaded"]["p50_ms"])
    out: dict[str, Any] = {}
    for a, b in (("cadre", "raw"), ("cadre", "langgraph"), ("cadre", "dbos"), ("raw", "langgraph"), ("raw", "dbos")):
        (wa, pa, ua), (wb, pb, ub) = sides[a], sides[b]
        out[f"{a}/{b}"] = {
            "workflows_per_s": round(wa / wb, 2),
            "p50_ms": round(pa / pb, 2),
            "unloaded_p50_ms": round(ua / ub, 2),
        }
    return out


def table(result: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    pipe, peers = result["pipeline"], result["peers"]
    rows = [
        ("raw nats-py JetStream ring", pipe["raw"], pipe["unloaded_latency"]["raw"], "file stream, awaited publish"),
        ("cadre", pipe["cadre"], pipe["unloaded_latency"]["cadre"], "file stream, signed events"),
        (
            "LangGraph + SQLite checkpointer",
            peers["langgraph"],
            peers["langgraph"]["unloaded"],
            peers["langgraph"]["durability"],
        ),
        ("DBOS + SQLite", peers["dbos"], peers["dbos"]["unloaded"], peers["dbos"]["durability"]),
    ]
    lines = [
        f"| system | workflows/s | p50 at {result['concurrency']} in flight | unloaded p50 | durability |",
        "|---|---:|---:|---:|---|",
    ]
    for name, f, u, dur in rows:
        lines.append(f"| {name} | {f['workflows_per_s']} | {f['p50_ms']} ms | {u['p50_ms']} ms | {dur} |")
    lines.append("")
    for k, v in result["ratios"].items():
        lines.append(
            f"{k}: workflows/s x{v['workflows_per_s']}, p50 x{v['p50_ms']}, unloaded p50 x{v['unloaded_p50_ms']}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace, url: str, work: Path) -> dict[str, Any]:
    pargs = pipeline.parse_args(
        [
            f"--workflows={args.workflows}",
            f"--concurrency={args.concurrency}",
            f"--runs={args.runs}",
            f"--latency-workflows={args.latency_workflows}",
        ]
    )
    note("cadre and the raw ring (bench/pipeline.py's main)")
    started = time.perf_counter()
    pipe = await pipeline.main(pargs, url, work)
    note(f"peers: LangGraph ({args.langgraph_durability}) and DBOS, SQLite in {work}")
    peers = await measure_peers(args, work)
    result: dict[str, Any] = {
        "workflows": args.workflows,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "latency_workflows": args.latency_workflows,
        "dag": pipeline.DAG,
        "pipeline": pipe,
        "peers": peers,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["ratios"] = ratios(result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="cadre and the raw ring beside LangGraph and DBOS, same DAG, same run")
    ap.add_argument("--workflows", type=int, default=300, help="workflows per run")
    ap.add_argument("--concurrency", type=int, default=32, help="workflows in flight at most")
    ap.add_argument("--runs", type=int, default=3, help="runs per side; figures are medians")
    ap.add_argument("--latency-workflows", type=int, default=50, help="workflows run one at a time, per run")
    ap.add_argument(
        "--langgraph-durability",
        choices=("sync", "async", "exit"),
        default="sync",
        help="LangGraph's checkpoint durability (sync: each step's checkpoint written before the next)",
    )
    ap.add_argument("--data-dir", type=Path, help="embedded server data dir (default: a fresh temp dir)")
    ap.add_argument("--nats", metavar="URL", help="use this server instead of an embedded one")
    args = ap.parse_args(argv)
    if args.workflows < 10 or min(args.concurrency, args.runs, args.latency_workflows) < 1:
        ap.error("--workflows >= 10 and --concurrency, --runs, --latency-workflows >= 1")
    return args


def run() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    per_round = 5 * pipeline.run_timeout(args.workflows) + 5 * pipeline.run_timeout(args.latency_workflows)
    total = 180 + 2 * (args.runs + 1) * per_round
    work = Path(tempfile.mkdtemp(prefix="cadre-peers-"))  # cadre's workspace, the peers' SQLite files
    try:
        with bench_server(args.nats, args.data_dir) as url:
            result = asyncio.run(asyncio.wait_for(main(args, url, work), total))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    note("\n" + table(result))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    run()
