"""cadre beside durable peers on the pipeline bench's DAG: LangGraph with its SQLite checkpointer and
DBOS with its SQLite system database, in the same run as cadre and the raw nats-py ring.

    .venv/bin/python -m pip install -e '.[bench]'      # the peers (``make bench`` does it)
    .venv/bin/python bench/peers.py [--workflows N] [--concurrency C] [--runs R] [--latency-workflows M]
                                    [--langgraph-durability sync|async|exit] [--nats URL] [--data-dir DIR]

The workload is ``bench/pipeline.py``'s: the DAG ``a, b -> c`` of three instant tools (``a`` and ``b``
in parallel, ``c`` after both, reading ``a``'s output), N workflows with at most C in flight, then M
one at a time (unloaded latency), R runs, medians. cadre and the raw ring are measured by
``pipeline.main`` itself (imported, not copied: same setup, warm-up and figures), each peer in the
same process with the same driver (``pipeline.Driver``), N, C and M. The run is R rounds: in each, one
run of ``pipeline.main`` (fresh streams, its own warm-up) and one of each peer, loaded and unloaded,
which of the two goes first alternating, so that every side meets the machine in the same state;
figures are medians over the rounds.

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

Every side's figures include this process's CPU per workflow (``cpu_ms_per_workflow``,
``time.process_time`` around each loaded run: every thread of the process, SQLite's and DBOS's included;
cadre's and the raw ring's as pipeline.main measures them), the figure the load of a shared machine moves
least. ``idle_cpu_ms_per_s`` is the process's CPU while its loop only waits, DBOS launched: what
background threads add to every side's figure.

One JSON object goes to stdout (``pipeline`` holds pipeline.main's whole result), a table to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import operator
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pipeline
from _common import idle_cpu_ms_per_s, median, note, percentile, run_in_workdir
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


@contextlib.asynccontextmanager
async def peers_running(args: argparse.Namespace, work: Path) -> AsyncIterator[tuple[LangGraphSide, DbosSide]]:
    """Both peers, set up and warmed up: DBOS launched on its SQLite file, LangGraph's saver on its own."""
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
            lg, db = LangGraphSide(saver, args.langgraph_durability), DbosSide()
            warm = min(args.workflows, 50)
            note(f"peers warm-up: {warm} workflows each")
            await lg.run("warm", warm, args.concurrency)
            await db.run("warm", warm, args.concurrency)
            yield lg, db
    finally:
        DBOS.destroy()


async def peers_round(
    args: argparse.Namespace,
    r: int,
    lg: LangGraphSide,
    db: DbosSide,
    runs: dict[str, list[pipeline.Run]],
    cpu_ms: dict[str, list[float]],
) -> None:
    """One run of each peer (loaded, then unloaded), the order rotating with ``r``; ``cpu_ms`` gets this
    process's CPU time per workflow of each run (``time.process_time``: every thread, SQLite's included)."""
    n, c, m = args.workflows, args.concurrency, args.latency_workflows
    sides: dict[str, Callable[[], Awaitable[pipeline.Run]]] = {
        "langgraph": lambda: lg.run(f"m{r}", n, c),
        "dbos": lambda: db.run(f"m{r}", n, c),
        "langgraph_unloaded": lambda: lg.run(f"u{r}", m, 1),
        "dbos_unloaded": lambda: db.run(f"u{r}", m, 1),
    }
    names = list(sides)
    k = r % len(names)
    for name in names[k:] + names[:k]:
        cpu = time.process_time()
        runs.setdefault(name, []).append(await sides[name]())
        cpu_ms.setdefault(name, []).append((time.process_time() - cpu) * 1000 / len(runs[name][-1][1]))
    figures = [
        f"{name} {len(lat) / s:.0f} wf/s p50 {percentile(lat, 50) * 1000:.1f} ms"
        for name in PEERS
        for s, lat in runs[name][-1:]
    ]
    note(f"  round {r + 1}/{args.runs}, peers: " + ", ".join(figures))


def peer_figures(
    args: argparse.Namespace,
    runs: dict[str, list[pipeline.Run]],
    pragmas: dict[str, Any],
    cpu_ms: dict[str, list[float]],
) -> dict[str, Any]:
    return {
        "langgraph": {
            **pipeline.summary(runs["langgraph"], 3),
            **cpu_figures(cpu_ms["langgraph"]),
            "unloaded": pipeline.unloaded(runs["langgraph_unloaded"]),
            "durability": f"AsyncSqliteSaver, durability={args.langgraph_durability!r}, SQLite "
            f"journal_mode={pragmas['journal_mode']}, synchronous={pragmas['synchronous']}",
        },
        "dbos": {
            **pipeline.summary(runs["dbos"], 3),
            **cpu_figures(cpu_ms["dbos"]),
            "unloaded": pipeline.unloaded(runs["dbos_unloaded"]),
            "durability": "SQLite system database (every step's output recorded before the workflow goes on)",
        },
    }


def cpu_figures(cpu_ms: list[float]) -> dict[str, Any]:
    """Median and runs of this process's CPU ms per workflow."""
    return {"cpu_ms_per_workflow": round(median(cpu_ms), 2), "runs_cpu_ms_per_workflow": [round(x, 2) for x in cpu_ms]}


def pipeline_figures(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of pipeline.main's one-run results (cadre, raw, unloaded p50s)."""
    out: dict[str, Any] = {}
    for side in ("cadre", "raw"):
        out[side] = {
            key: round(median([float(p[side][key]) for p in rounds]), 1)
            for key in ("workflows_per_s", "p50_ms", "p99_ms")
        }
        out[side]["runs_workflows_per_s"] = [p[side]["workflows_per_s"] for p in rounds]
        out[side]["runs_p50_ms"] = [p[side]["p50_ms"] for p in rounds]
        unl = [float(p["unloaded_latency"][side]["p50_ms"]) for p in rounds]
        out[side]["unloaded"] = {"p50_ms": round(median(unl), 2), "runs_p50_ms": unl}
        # pipeline.main prints cadre's CPU figures at its top level, the raw ring's in its "raw" part.
        figures = [p if side == "cadre" else p["raw"] for p in rounds]
        out[side].update(cpu_figures([float(f["cpu_ms_per_workflow"]) for f in figures]))
        server = [float(f["server_cpu_ms_per_workflow"]) for f in figures if f.get("server_cpu_ms_per_workflow")]
        out[side]["server_cpu_ms_per_workflow"] = round(median(server), 2) if server else None
    out["hop_ratio"] = round(median([float(p["hop_ratio"]) for p in rounds]), 3)
    return out


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """cadre's and the raw ring's figures over each peer's (throughput: higher is better for the first;
    p50: lower is better for the first)."""
    pipe = result["pipeline"]
    sides = {
        side: (pipe[side]["workflows_per_s"], pipe[side]["p50_ms"], pipe[side]["unloaded"]["p50_ms"])
        for side in ("cadre", "raw")
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
        ("raw nats-py JetStream ring", pipe["raw"], pipe["raw"]["unloaded"], "file stream, awaited publish"),
        ("cadre", pipe["cadre"], pipe["cadre"]["unloaded"], "file stream, signed events"),
        (
            "LangGraph + SQLite checkpointer",
            peers["langgraph"],
            peers["langgraph"]["unloaded"],
            peers["langgraph"]["durability"],
        ),
        ("DBOS + SQLite", peers["dbos"], peers["dbos"]["unloaded"], peers["dbos"]["durability"]),
    ]
    lines = [
        f"| system | workflows/s | p50 at {result['concurrency']} in flight | unloaded p50 | process CPU per workflow "
        "| durability |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, f, u, dur in rows:
        lines.append(
            f"| {name} | {f['workflows_per_s']} | {f['p50_ms']} ms | {u['p50_ms']} ms | {f['cpu_ms_per_workflow']} ms "
            f"| {dur} |"
        )
    lines.append(f"(this process's CPU while idle, DBOS launched: {result['idle_cpu_ms_per_s']} ms per s)")
    lines.append("")
    for k, v in result["ratios"].items():
        lines.append(
            f"{k}: workflows/s x{v['workflows_per_s']}, p50 x{v['p50_ms']}, unloaded p50 x{v['unloaded_p50_ms']}"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace, url: str, work: Path) -> dict[str, Any]:
    """R rounds, each one run of pipeline.main (cadre and the raw ring, fresh streams, its own warm-up)
    and one of each peer, which goes first alternating per round: the sides share the machine's state."""
    pargs = pipeline.parse_args(
        [
            f"--workflows={args.workflows}",
            f"--concurrency={args.concurrency}",
            "--runs=1",
            f"--latency-workflows={args.latency_workflows}",
        ]
    )
    started = time.perf_counter()
    rounds: list[dict[str, Any]] = []
    runs: dict[str, list[pipeline.Run]] = {}
    cpu_ms: dict[str, list[float]] = {}
    async with peers_running(args, work) as (lg, db):
        pragmas = await lg.pragmas()
        idle = await idle_cpu_ms_per_s()
        for r in range(args.runs):
            cadre_dir = work / f"cadre-{r}"
            cadre_dir.mkdir()
            if r % 2:
                await peers_round(args, r, lg, db, runs, cpu_ms)
            note(f"  round {r + 1}/{args.runs}: cadre and the raw ring (bench/pipeline.py's main)")
            rounds.append(await pipeline.main(pargs, url, cadre_dir))
            if not r % 2:
                await peers_round(args, r, lg, db, runs, cpu_ms)
    result: dict[str, Any] = {
        "workflows": args.workflows,
        "concurrency": args.concurrency,
        "runs": args.runs,
        "latency_workflows": args.latency_workflows,
        "dag": pipeline.DAG,
        "pipeline": pipeline_figures(rounds),
        "peers": peer_figures(args, runs, pragmas, cpu_ms),
        "idle_cpu_ms_per_s": idle,
        "pipeline_rounds": rounds,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["ratios"] = ratios(result)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="cadre and the raw ring beside LangGraph and DBOS, same DAG, same run")
    ap.add_argument("--workflows", type=int, default=300, help="workflows per run")
    ap.add_argument("--concurrency", type=int, default=32, help="workflows in flight at most")
    ap.add_argument("--runs", type=int, default=3, help="rounds (a run of every side); figures are medians")
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
    # cadre's workspace and the peers' SQLite files in a temporary directory
    run_in_workdir(args.nats, args.data_dir, lambda url, work: main(args, url, work), total, "cadre-peers-", table)


if __name__ == "__main__":
    run()
