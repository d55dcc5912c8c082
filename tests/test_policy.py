"""The policy file of a deployment, and agent pools.

* one loader reads a policy file (JSON or TOML) for a live deployment and for a what-if; its keys
  land on the settings of the same name, the limits key by key;
* a deployment started with a policy file enforces its limits, prohibited tools and pools when it
  validates a plan, and ``cadre replay --policy`` with the same file on a run made without it
  lists the same refusals;
* a task's pool is checked at plan time (declared, and may use the task's tools) and again by the
  agent at run time (``pool_refused``); two agents of two pools each run only their pool's steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.js import api

from cadre.actors.metrics import Metrics
from cadre.actors.runtime import consumer_name
from cadre.auth_cli import bootstrap, prepare_embedded
from cadre.bus.auth import AuthNames, creds_path, permissions
from cadre.bus.embedded import start_embedded
from cadre.bus.events import PlanRejected, StepFailed
from cadre.bus.plan import StepIntent, Task
from cadre.bus.request import parse_request
from cadre.commands import UsageError
from cadre.planner import pools
from cadre.policy_file import apply_policy, deployment_settings, load_policy
from cadre.replay_cli import replayer_for
from cadre.settings import Settings
from cadre.system import run_system
from cadre.whatif_policy import what_if_setup
from tests.system_harness import cadre_running, settings_for

POOLS = {"files": {"tools": ["fs.read", "fs.write"]}, "data": {"tools": ["sql.query", "sql.schema", "text.render"]}}


def plan(*nodes: dict[str, Any], output: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"nodes": list(nodes)}
    if output is not None:
        body["output"] = output
    return {"plan": body}


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def tool_calls(metrics: Metrics) -> dict[str, float]:
    """Tool calls a process made, by tool (every outcome)."""
    out: dict[str, float] = {}
    for metric in metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "cadre_tool_calls_total":
                tool = sample.labels["tool"]
                out[tool] = out.get(tool, 0) + sample.value
    return out


def failed_checks(events: list[Any]) -> list[str]:
    rejected = [e.event.data for e in events if isinstance(e.event.data, PlanRejected)]
    assert rejected, [e.event.type for e in events]
    return [c.message for c in rejected[0].checks if not c.passed]


# -- the file --------------------------------------------------------------------------------


def test_a_policy_file_sets_the_deployments_settings_by_name(tmp_path: Path) -> None:
    path = write(
        tmp_path / "policy.json",
        {
            "prohibited_tools": ["http.get"],
            "approval_tools": ["fs.write"],
            "limits": {"max_tasks": 3},
            "budget_workflow_usd": 0.02,
            "budget_daily_usd": 2.0,
            "intelligence": "basic",
            "mode": "strict",
            "pools": POOLS,
        },
    )
    settings = deployment_settings(Settings(policy=path, limits={"max_depth": 4}))
    assert settings.prohibited_tools == ["http.get"]
    assert settings.approval_tools == ["fs.write"]
    assert (settings.limits.max_tasks, settings.limits.max_depth) == (3, 4)  # key by key over the deployment's
    assert settings.limits.max_steps_per_task == 10
    assert (settings.budget_workflow_usd, settings.budget_daily_usd) == (0.02, 2.0)
    assert (settings.intelligence, settings.mode) == ("basic", "strict")
    assert sorted(settings.pools) == ["data", "files"]
    assert settings.pools["files"].tools == ["fs.read", "fs.write"]
    assert settings.auth_names().pools == ("data", "files")  # each pool's durable is allowed to agents


def test_the_same_policy_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('prohibited_tools = ["fs.write"]\n[limits]\nmax_tasks = 2\n[pools.files]\ntools = ["fs.read"]\n')
    settings = apply_policy(Settings(), load_policy(path))
    assert settings.prohibited_tools == ["fs.write"]
    assert settings.limits.max_tasks == 2
    assert settings.pools["files"].tools == ["fs.read"]


def test_the_confidence_thresholds_go_onto_settings_of_their_name(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path / "p.json", {"approve_below": 0.6, "reject_below": 0.2}))
    if "approve_below" in Settings.model_fields:
        settings = apply_policy(Settings(), policy)
        assert settings.model_dump(include={"approve_below", "reject_below"}) == {
            "approve_below": 0.6,
            "reject_below": 0.2,
        }
    else:  # a cadre without those settings says so rather than ignoring them
        with pytest.raises(UsageError, match=r"^the policy sets approve_below, reject_below, which"):
            apply_policy(Settings(), policy)


def test_the_shipped_deployment_policy_loads_and_its_pools_name_catalog_tools() -> None:
    shipped = Path(__file__).resolve().parent.parent / "deploy" / "policy.toml"
    settings = deployment_settings(Settings(policy=shipped))
    assert sorted(settings.pools) == ["data", "files"]
    assert settings.approval_tools == ["fs.write"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"pools": {"a.b": {"tools": ["fs.read"]}}}, r"pools: Value error, agent pool names are 1-64 of"),
        ({"pools": {"files": {"tools": []}}}, r"pools\.files\.tools: List should have at least 1 item"),
        (
            {"pools": {"files": {"tool": ["fs.read"]}}},
            r"pools\.files\.tools: Field required; pools\.files\.tool: Extra inputs are not permitted",
        ),
        ({"reject_below": 2}, r"reject_below: Input should be less than or equal to 1"),
    ],
)
def test_a_bad_policy_file_is_a_usage_error_naming_the_key(tmp_path: Path, doc: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=r"^policy file .*p\.json: " + message):
        load_policy(write(tmp_path / "p.json", doc))


def test_a_pool_naming_an_unknown_tool_or_an_undeclared_agent_pool_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "p.json", {"pools": {"files": {"tools": ["fs.raed"]}}})
    with pytest.raises(UsageError, match=r"^agent pool 'files' names tools the catalog does not have: fs\.raed$"):
        deployment_settings(Settings(policy=path))
    path = write(tmp_path / "p.json", {"pools": POOLS})
    with pytest.raises(UsageError, match=r"^agent pool 'web' is not declared in the deployment's policy"):
        deployment_settings(Settings(policy=path, agent_pool="web"))


def test_a_task_names_its_pool_in_a_request() -> None:
    body = plan({"id": "q", "tool": "sql.query", "inputs": {"sql": "select 1"}, "pool": "data"})
    assert parse_request(json.dumps(body).encode()).plan.nodes[0].pool == "data"  # type: ignore[union-attr]


# -- the decisions ---------------------------------------------------------------------------


def test_which_agent_takes_which_step() -> None:
    declared = {"files": frozenset({"fs.write"})}
    assert pools.serves("files", "files", declared)
    assert not pools.serves("files", None, declared)
    assert not pools.serves("files", "data", declared)
    assert pools.serves(None, None, declared)
    assert not pools.serves(None, "files", declared)  # the pool's agents take it
    assert pools.serves(None, "ghost", declared)  # nobody else would: the agent without a pool refuses it
    assert pools.serves(pools.EVERY_POOL, "files", declared)
    step = StepIntent(id="s", task_id="t", tool="fs.write", fallback_tools=("sql.query",))
    refused = pools.refusal("files", step, declared)
    assert refused is not None
    assert refused.code == "pool_refused"
    assert refused.message == "agent pool 'files' may not use 'sql.query' (it may use 'fs.write')"
    assert pools.refusal(None, step, None) is None
    task = Task(id="t", tool="fs.write", pool="files")
    assert [c.passed for c in pools.check_plan_pools([task, Task(id="u", tool="sql.query")], declared)] == [True]


# -- a live deployment -----------------------------------------------------------------------


async def test_plan_time_a_task_of_an_undeclared_pool_or_a_tool_outside_its_pool_is_rejected(
    nats_url: str, tmp_path: Path
) -> None:
    settings = apply_policy(settings_for(nats_url, tmp_path), load_policy(write(tmp_path / "p.json", {"pools": POOLS})))
    async with cadre_running(settings) as h:
        state = await h.run(
            plan(
                {"id": "a", "tool": "fs.read", "inputs": {"path": "x"}, "pool": "web"},
                {"id": "b", "tool": "sql.query", "inputs": {"sql": "select 1"}, "pool": "files"},
                {
                    "id": "c",
                    "tool": "fs.read",
                    "inputs": {"path": "x"},
                    "fallback_tools": ["sql.schema"],
                    "pool": "files",
                },
            )
        )
        assert state.status == "failed"
        assert state.failure is not None
        assert state.failure.code == "plan_rejected"
        assert failed_checks(await h.events(state.workflow_id)) == [
            "task 'a': agent pool 'web' is not declared in the deployment's policy (pools: 'data', 'files')",
            "task 'b': agent pool 'files' may not use 'sql.query' (it may use 'fs.read', 'fs.write')",
            "task 'c': agent pool 'files' may not use 'sql.schema' (it may use 'fs.read', 'fs.write')",
        ]


async def test_without_pools_in_the_policy_a_task_naming_one_is_rejected(nats_url: str, tmp_path: Path) -> None:
    async with cadre_running(settings_for(nats_url, tmp_path)) as h:
        state = await h.run(plan({"id": "a", "tool": "test.echo", "inputs": {"value": "v"}, "pool": "files"}))
        assert state.failure is not None
        assert state.failure.code == "plan_rejected"
        assert failed_checks(await h.events(state.workflow_id)) == [
            "task 'a': agent pool 'files' is not declared: the deployment's policy declares no agent pools"
        ]


async def test_two_agents_of_two_pools_each_run_only_their_pools_steps(nats_url: str, tmp_path: Path) -> None:
    """The deployment runs an agent without a pool; two more processes' worth of agents serve
    the pools; each takes only its pool's steps (its tool calls show it)."""
    settings = apply_policy(settings_for(nats_url, tmp_path), load_policy(write(tmp_path / "p.json", {"pools": POOLS})))
    files, data = Metrics.create(), Metrics.create()
    async with (
        cadre_running(settings) as h,
        run_system(h.bus, settings, ("agent",), agent_pools=("files",), metrics=files),
        run_system(h.bus, settings, ("agent",), agent_pools=("data",), metrics=data),
    ):
        state = await h.run(
            plan(
                {"id": "save", "tool": "fs.write", "inputs": {"path": "out/p.txt", "content": "x"}, "pool": "files"},
                {
                    "id": "count",
                    "tool": "sql.query",
                    "inputs": {"sql": "SELECT COUNT(*) AS n FROM customers"},
                    "pool": "data",
                },
                {"id": "echo", "tool": "test.echo", "inputs": {"value": "free"}},
                {
                    "id": "back",
                    "tool": "fs.read",
                    "inputs": {"path": "out/p.txt"},
                    "depends_on": ["save"],
                    "pool": "files",
                },
                output="count",
            )
        )
        assert state.status == "completed", state.failure
        main = h.system.metrics if h.system is not None else None
        assert main is not None
        records = await h.bus.log.read_records(state.workflow_id)
    replayed = replayer_for(settings).replay(records)  # the replay's agent serves every pool
    assert replayed.ok, "\n".join(replayed.lines())
    assert tool_calls(files) == {"fs.write": 1, "fs.read": 1}
    assert tool_calls(data) == {"sql.query": 1}
    assert tool_calls(main) == {"test.echo": 1}


async def test_run_time_the_agent_refuses_a_tool_its_pool_may_not_use(nats_url: str, tmp_path: Path) -> None:
    """The validator's policy lets pool files query the database; the pool's agent, started with a
    policy that does not, refuses the step (a policy refusal: no recovery) instead of running it."""
    loose = apply_policy(
        settings_for(nats_url, tmp_path),
        load_policy(write(tmp_path / "loose.json", {"pools": {"files": {"tools": ["fs.write", "sql.query"]}}})),
    )
    strict = apply_policy(
        loose, load_policy(write(tmp_path / "strict.json", {"pools": {"files": {"tools": ["fs.write"]}}}))
    )
    metrics = Metrics.create()
    async with (
        cadre_running(loose) as h,
        run_system(h.bus, strict, ("agent",), agent_pools=("files",), metrics=metrics),
    ):
        state = await h.run(
            plan({"id": "q", "tool": "sql.query", "inputs": {"sql": "SELECT 1 AS one"}, "pool": "files"})
        )
        assert state.status == "failed"
        assert state.failure is not None
        failed = [e.event.data for e in await h.events(state.workflow_id) if isinstance(e.event.data, StepFailed)]
    assert [f.error.code for f in failed] == ["pool_refused"]
    assert failed[0].error.message == "agent pool 'files' may not use 'sql.query' (it may use 'fs.write')"
    assert tool_calls(metrics) == {}


async def test_run_time_the_agent_without_a_pool_refuses_a_step_of_a_pool_its_policy_does_not_declare(
    nats_url: str, tmp_path: Path
) -> None:
    """A validator whose policy declares pool night passes the plan; the only agent, started with a
    policy that declares no such pool, refuses the step rather than leave it to no one."""
    night = apply_policy(
        settings_for(nats_url, tmp_path),
        load_policy(write(tmp_path / "v.json", {"pools": {"night": {"tools": ["test.echo"]}}})),
    )
    day = apply_policy(night, load_policy(write(tmp_path / "a.json", {"pools": {"day": {"tools": ["test.echo"]}}})))
    metrics = Metrics.create()
    async with (
        cadre_running(night, kinds=("planner", "validator", "decomposer", "budget", "approvals")) as h,
        run_system(h.bus, day, ("agent",), metrics=metrics),
    ):
        state = await h.run(plan({"id": "e", "tool": "test.echo", "inputs": {"value": "v"}, "pool": "night"}))
        assert state.status == "failed"
        failed = [e.event.data for e in await h.events(state.workflow_id) if isinstance(e.event.data, StepFailed)]
    assert [(f.error.code, f.error.message) for f in failed] == [
        ("pool_refused", "agent pool 'night' is not declared in the deployment's policy (pools: 'day')")
    ]
    assert tool_calls(metrics) == {}


async def test_a_policy_files_refusals_are_the_same_live_and_as_a_what_if(nats_url: str, tmp_path: Path) -> None:
    """A deployment started with the policy file refuses the plan at plan time; the same plan run by
    a deployment without it completes, and replaying that run with the file as a what-if lists
    each of the live refusals."""
    policy_path = write(
        tmp_path / "policy.json",
        {"limits": {"max_tasks": 2}, "prohibited_tools": ["fs.write"], "pools": {"data": {"tools": ["sql.query"]}}},
    )
    body = plan(
        {"id": "q", "tool": "sql.query", "inputs": {"sql": "SELECT 1 AS one"}, "pool": "data"},
        {"id": "e", "tool": "test.echo", "inputs": {"value": "after q"}, "depends_on": ["q"], "pool": "data"},
        {"id": "s", "tool": "fs.write", "inputs": {"path": "out/w.txt", "content": "w"}},
        output="e",
    )
    base = {"pools": {"data": {"tools": ["sql.query", "test.echo"]}}}
    without = apply_policy(settings_for(nats_url, tmp_path / "b"), load_policy(write(tmp_path / "base.json", base)))
    async with cadre_running(without, agent_pools=(None, "data")) as h:
        state = await h.run(body)
        assert state.status == "completed", state.failure
        records = await h.bus.log.read_records(state.workflow_id)
    live = deployment_settings(settings_for(nats_url, tmp_path / "a", policy=policy_path))
    async with cadre_running(live, agent_pools=(None, *live.pools)) as h:
        state = await h.run(body)
        assert state.failure is not None
        assert state.failure.code == "plan_rejected"
        refusals = failed_checks(await h.events(state.workflow_id))
    assert len(refusals) == 3, refusals  # the limit, the prohibited tool, the pool
    setup = what_if_setup(without, load_policy(policy_path), replayer_for(without))
    changes = [c.line() for c in setup.replayer.what_if(records, setup.whatif, setup.catalog).changes]
    rejected = [c for c in changes if "plan revision 1 would now be rejected" in c]
    assert len(rejected) == 1, changes
    for message in refusals:
        assert message in rejected[0], (message, rejected[0])
    # and, had the plan run, the step the pool's agent would refuse at run time
    assert any(
        "step e.s1 would now fail: pool_refused: agent pool 'data' may not use 'test.echo'" in c for c in changes
    )


def test_an_agent_may_consume_with_each_pools_durable_and_no_other_role_may() -> None:
    names = AuthNames(prefix="acme", stream="ACME", pools=("data", "files"))
    agent = permissions("agent", names).publish or ()
    for durable in ("acme_agent", "acme_agent_pool_data", "acme_agent_pool_files"):
        assert f"$JS.API.CONSUMER.DURABLE.CREATE.ACME.{durable}" in agent
        assert f"$JS.ACK.ACME.{durable}.>" in agent
    planner = permissions("planner", names).publish or ()
    # The planner's only other durable is its children relay's (actors.children), never an agent pool's.
    assert {p for p in planner if "_pool_" in p} == {
        "$JS.API.CONSUMER.DURABLE.CREATE.ACME.acme_planner_pool_children",
        "$JS.API.CONSUMER.INFO.ACME.acme_planner_pool_children",
        "$JS.API.CONSUMER.MSG.NEXT.ACME.acme_planner_pool_children",
        "$JS.ACK.ACME.acme_planner_pool_children.>",
    }
    assert AuthNames().to_json() == {  # a deployment without pools keeps the credentials it minted
        "prefix": "cadre",
        "stream": "CADRE_EVENTS",
        "ledger": "CADRE_LEDGER",
        "cache_bucket": "CADRE_INFERENCE",
        "requests_stream": "CADRE_EVENTS_REQUESTS",  # the durable intake's: its permissions came with it
        "outputs_bucket": "CADRE_OUTPUTS",
    }


async def test_the_agents_credentials_open_each_declared_pools_consumer_on_a_real_server(tmp_path: Path) -> None:
    """With authorization on (the embedded server's, minted for the settings' pools): the agent role
    creates a declared pool's durable, not an undeclared one's; no other actor role creates either."""
    settings = Settings.load(
        data_dir=tmp_path / "data", pools={"files": {"tools": ["fs.read"]}, "db": {"tools": ["sql.query"]}}
    )
    server = start_embedded(settings.data_dir, config=prepare_embedded(settings))
    try:
        await bootstrap(settings, server.url, settings.auth_dir)

        async def create(role: str, durable: str) -> bool:
            nc = await nats.connect(server.url, user_credentials=str(creds_path(settings.auth_dir, role)))
            try:
                cfg = api.ConsumerConfig(
                    durable_name=durable,
                    filter_subjects=[
                        settings.subjects.of_type("step_ready"),
                        settings.subjects.of_type("approval_granted"),
                    ],
                    ack_policy=api.AckPolicy.EXPLICIT,
                )
                await nc.jetstream(timeout=1).add_consumer(settings.stream_name, cfg)
                return True
            except (nats.errors.TimeoutError, nats.js.errors.Error):
                return False
            finally:
                await nc.close()

        # The node role (`cadre up`) connects although its JWT, with the pools' durables, is over 4 KB.
        node = await nats.connect(server.url, user_credentials=str(creds_path(settings.auth_dir, "node")))
        await node.close()
        assert await create("agent", consumer_name("cadre", "agent", "files"))
        assert not await create("agent", consumer_name("cadre", "agent", "data"))
        assert not await create("validator", consumer_name("cadre", "agent", "files"))
    finally:
        server.stop()
