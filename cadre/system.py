"""Composition of the actor system from settings: which kinds run here, with which ports."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

from cadre.actors import children, tracing
from cadre.actors.answers import LiveAnswers
from cadre.actors.approvals import ApprovalPolicy, serve_approvals
from cadre.actors.budget import BudgetClient, serve_budget
from cadre.actors.context import Outside
from cadre.actors.inference import Policy
from cadre.actors.intake import serve_intake
from cadre.actors.intake_metrics import IntakeMetrics
from cadre.actors.library_source import LogLibrary
from cadre.actors.metrics import Metrics
from cadre.actors.ping import serve_ping
from cadre.actors.runtime import ActorSpec, ActorSystem, RuntimeOptions, run_actors
from cadre.actors.specs import live_specs
from cadre.actors.tool_port import ToolRunner
from cadre.actors.tools import ToolBox, ToolConfig, builtin_impls, ensure_sample_database
from cadre.actors.tools.builtin import compensation_impls
from cadre.actors.tools.plugins import load_tool_modules, plugin_impls
from cadre.budget_config import budget_config, ledger_spec
from cadre.bus.errors import CadreError
from cadre.flow_preview import preview_outside, serve_plan
from cadre.grounding_config import grounder_for
from cadre.llm import build_llm
from cadre.planner.builtin_tools import builtin_catalog, compensation_specs
from cadre.planner.catalog import Catalog
from cadre.planner.children import WORKFLOW_RUN
from cadre.planner.flows.registry import FlowSet, load_folder
from cadre.planner.pools import EVERY_POOL, Pools
from cadre.planner.safety import SafetyContext
from cadre.settings import Settings
from cadre.trust import keyring_loader, trust_for
from cadre.wiring import Bus

ACTOR_KINDS = ("planner", "validator", "decomposer", "agent")
KINDS = (*ACTOR_KINDS, "budget", "approvals")
"""What a process can run: the actor kinds, and the budget and approvals services."""


def signing_roles(kinds: Sequence[str]) -> tuple[str, ...]:
    """The roles a process running ``kinds`` must sign as (the intake, hosted by the planner's
    process, signs as the intake when that key is here, else as the planner)."""
    return tuple(k for k in kinds if k != "budget")


def approval_policy(settings: Settings) -> ApprovalPolicy:
    return ApprovalPolicy({tool: frozenset(names) for tool, names in settings.approvers.items()})


def catalog_for(settings: Settings) -> Catalog:
    """The built-in tools and the tool modules' tools, under the deployment's policy."""
    extra = [spec for spec, _ in load_tool_modules(settings.tool_modules)]
    catalog = Catalog([*builtin_catalog().values(), *extra])
    return catalog.with_policy(prohibited=settings.prohibited_tools, approval=settings.approval_tools)


class UnknownPool(CadreError):
    """An agent is to serve a pool the deployment's policy does not declare."""

    code = "unknown_pool"


def pools_of(settings: Settings) -> Pools | None:
    """The deployment's agent pools and their tools (None: it declares none)."""
    return {name: frozenset(p.tools) for name, p in settings.pools.items()} or None


def flows_for(settings: Settings, catalog: Catalog) -> FlowSet | None:
    """The deployment's flows (``CADRE_FLOWS``), checked against ``catalog``; None without the setting.
    :class:`~planner.flows.registry.FlowsInvalid` (every problem of every file) stops the start."""
    if settings.flows is None:
        return None
    return load_folder(settings.flows, catalog, child_max_depth(settings))


def check_pool(settings: Settings, pool: str | None) -> None:
    """Raise :class:`UnknownPool` unless ``pool`` is None or declared in the settings' pools."""
    if pool is not None and pool not in settings.pools:
        declared = ", ".join(sorted(settings.pools)) or "none; a policy file declares them"
        raise UnknownPool(f"agent pool {pool!r} is not declared in the deployment's policy (pools: {declared})")


def child_max_depth(settings: Settings) -> int:
    """How deep child workflows may nest here: 0 (none) when the policy prohibits ``workflow.run``."""
    return 0 if WORKFLOW_RUN in settings.prohibited_tools else settings.child_max_depth


def system_specs(
    settings: Settings, catalog: Catalog | None = None, *, agent_pool: str | None = EVERY_POOL
) -> tuple[ActorSpec, ...]:
    """The handlers this deployment runs (a replay of its runs uses the same: ``cadre.replay_cli``),
    with its validator limits and agent pools; the agent serves ``agent_pool`` (``actors.agent``;
    by default every pool, as a replay)."""
    catalog = catalog if catalog is not None else catalog_for(settings)
    return live_specs(
        catalog,
        approval_timeout=timedelta(seconds=settings.approval_timeout_s),
        limits=dataclasses.replace(
            settings.limits.to_limits(),
            reject_below=settings.reject_below,
            model_side_effects_need_approval=settings.model_side_effects_need_approval,
            max_child_depth=child_max_depth(settings),
        ),
        approve_below=settings.approve_below,
        pools=pools_of(settings),
        agent_pool=agent_pool,
        rate_limit_wait_s=settings.rate_limit_wait_max_s,
        on_failure=settings.on_failure,
        safety=SafetyContext(http_allow=tuple(settings.http_allow)),
        flows=flows_for(settings, catalog),
    )


APPENDING_KINDS = frozenset({*ACTOR_KINDS, "approvals"})
"""The kinds whose processes append events (the intake runs with the planner; the budget appends none)."""


def state_feed(settings: Settings, kinds: Sequence[str], served: Sequence[str | None]) -> bool:
    """Whether the state cache of a process running ``kinds`` (its agents serving ``served`` pools)
    follows the whole stream. ``auto``: not when the process runs every kind that appends and its
    agents serve every pool, so that nearly every event is one it appended or is handed as an
    input (a split deployment would read the log for most inputs instead)."""
    if settings.state_feed != "auto":
        return settings.state_feed == "on"
    every_pool = EVERY_POOL in served or set(settings.pools) <= {p for p in served if p is not None}
    return not (set(kinds) >= APPENDING_KINDS and every_pool)


def runtime_options(settings: Settings, *, feed: bool = True) -> RuntimeOptions:
    return RuntimeOptions(
        batch=settings.actor_batch,
        max_in_flight=settings.actor_max_in_flight,
        max_ack_pending=settings.actor_max_ack_pending,
        ack_wait=settings.actor_ack_wait_s,
        max_attempts=settings.actor_max_attempts,
        drain_timeout=settings.actor_drain_timeout_s,
        state_release_after=settings.state_release_after_s,
        state_max_workflows=settings.state_max_workflows,
        state_recent_events=settings.state_recent_events,
        partitions=settings.partitions,
        partition_lease_ttl=settings.partition_lease_ttl_s,
        state_feed=feed,
    )


@asynccontextmanager
async def run_system(
    bus: Bus,
    settings: Settings,
    kinds: Sequence[str] = KINDS,
    *,
    replicas: int = 1,
    metrics: Metrics | None = None,
    agent_pools: Sequence[str | None] | None = None,
) -> AsyncIterator[ActorSystem | None]:
    """Run the given actor kinds (``replicas`` of each) on ``bus`` until the block exits.

    The intake runs with the planner; the budget is a request/reply service. The agents serve
    ``agent_pools`` (None: the steps without a pool), each pool with its own consumer; by default
    the settings' ``agent_pool``. Yields the actor system (None when only the budget runs here).
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown actor kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    served = tuple(dict.fromkeys(agent_pools if agent_pools is not None else (settings.agent_pool,))) or (None,)
    for pool in served:
        check_pool(settings, pool)
    catalog = catalog_for(settings)
    trust = trust_for(settings, (*signing_roles(kinds), "intake"))
    trust.require(signing_roles(kinds))
    metrics = metrics or Metrics.create()
    if settings.metrics_port is not None:
        metrics.serve(settings.metrics_port)
    tracing.configure(settings.traces, settings.otlp_endpoint)
    tools = None
    if "agent" in kinds:
        settings.workspace_dir.mkdir(parents=True, exist_ok=True)
        database = (
            settings.database if settings.database is not None else ensure_sample_database(settings.database_path)
        )
        config = ToolConfig(
            workspace=settings.workspace_dir,
            database=database,
            http_allow=tuple(settings.http_allow),
            max_output_bytes=settings.tool_output_max_bytes,
            undo_inline_max_bytes=settings.tool_output_inline_max_bytes,
        )
        impls = {**builtin_impls(), **compensation_impls(), **plugin_impls(load_tool_modules(settings.tool_modules))}
        # The agents' toolbox also has the compensating tools, which nothing plans (``actors.compensation``).
        runnable = Catalog([*catalog.values(), *(s for s in compensation_specs() if s.name not in catalog)])
        tools = ToolRunner(ToolBox(runnable, {n: f for n, f in impls.items() if n in runnable}, config))
    library = None
    if "planner" in kinds:
        library = LogLibrary(
            bus.log,
            settings.plan_library_dir,
            threshold=settings.library_threshold,
            learn_explicit=settings.library_learn_explicit,
            max_learned=settings.library_max_learned,
        )
    llm = build_llm(settings) if set(kinds) & {"planner", "decomposer", "agent"} else None
    grounder = grounder_for(settings, catalog, library) if set(kinds) & {"planner", "decomposer"} else None
    pricing = budget_config(settings)  # its prices and worst-case rule quote a dry run's steps
    outside = Outside(
        tools=tools,
        budget=BudgetClient(bus.nc, settings.subjects, timeout=settings.budget_timeout_s),
        library=library,
        llm=llm,
        grounding=grounder,
        policy=Policy(intelligence=settings.intelligence, mode=settings.mode),
        prices=pricing.prices,
        input_safety_factor=pricing.input_safety_factor,
        workflow_cap_usd=pricing.workflow_usd,
    )

    specs = [(s, replicas) for s in system_specs(settings, catalog) if s.kind in kinds and s.kind != "agent"]
    if "planner" in kinds:  # the relay between parent and child workflows (actors.children)
        specs.append((children.relay_spec(bus.log.signed_by(trust.signer("planner"))), 1))
    if "agent" in kinds:
        for pool in served:
            specs += [(s, replicas) for s in system_specs(settings, catalog, agent_pool=pool) if s.kind == "agent"]
    async with AsyncExitStack() as stack:
        if llm is not None:
            for provider in llm.providers():
                stack.push_async_callback(provider.aclose)
        if "budget" in kinds:
            await stack.enter_async_context(
                serve_budget(
                    bus.nc,
                    settings.subjects,
                    budget_config(settings),
                    ledger=ledger_spec(settings),
                    cache_bucket=settings.inference_cache_bucket,
                    cache_ttl_s=settings.inference_cache_ttl_s,
                    metrics=metrics,
                    retry=settings.retry_policy(),
                )
            )
        system = None
        if specs:
            system = await stack.enter_async_context(
                run_actors(
                    bus.log,
                    specs,
                    outside=outside,
                    options=runtime_options(settings, feed=state_feed(settings, kinds, served)),
                    metrics=metrics,
                    trust=trust,
                )
            )
        if "planner" in kinds:
            intake = trust.signer("intake") or trust.signer("planner")
            await stack.enter_async_context(
                serve_intake(
                    bus.log.signed_by(intake),
                    settings.intake(),
                    settings.intake_options(),
                    IntakeMetrics.create(metrics.registry),
                )
            )
        if "approvals" in kinds:
            signed = bus.log.signed_by(trust.signer("approvals"))
            await stack.enter_async_context(
                serve_approvals(signed, keyring_loader(settings), approval_policy(settings))
            )
        flows = flows_for(settings, catalog) if "planner" in kinds else None
        if flows is not None:  # previews of a request's flow and path (`cadre plan`, <prefix>.plan)
            await stack.enter_async_context(
                serve_plan(
                    bus.nc,
                    settings.subjects,
                    flows,
                    catalog,
                    model=llm is not None,
                    answers=LiveAnswers(preview_outside(outside)) if llm is not None else None,
                )
            )
        await stack.enter_async_context(serve_ping(bus.nc, settings.subjects, kinds, replicas))
        yield system
