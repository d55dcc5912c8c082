"""Prometheus metrics of an actor process (served on ``/metrics`` when a port is set)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from cadre.bus.retry import RETRIES


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events_handled: Counter
    handler_seconds: Histogram
    redeliveries: Counter
    dead_letters: Counter
    forged: Counter
    conflicts: Counter
    workflows: Counter
    tool_calls: Counter
    consultations: Counter
    llm_tokens: Counter
    llm_usd: Counter
    budget_decisions: Counter
    budget_decision_seconds: Histogram
    budget_overruns: Counter
    steps_proposed: Counter
    llm_seconds: Histogram
    llm_fallbacks: Counter
    budget_cap: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        reg = registry if registry is not None else CollectorRegistry()
        # The NATS calls retried through outages (bus.retry counts them for the whole process).
        with contextlib.suppress(ValueError):  # registered in this registry already
            reg.register(RETRIES)
        return cls(
            registry=reg,
            events_handled=Counter(
                "cadre_events_handled",
                "Events handled, by actor kind, event type and outcome",
                ["kind", "type", "outcome"],
                registry=reg,
            ),
            handler_seconds=Histogram(
                "cadre_handler_seconds",
                "Handler latency (state, handler, append)",
                ["kind", "type"],
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                registry=reg,
            ),
            redeliveries=Counter("cadre_redeliveries", "Inputs delivered more than once", ["kind"], registry=reg),
            dead_letters=Counter("cadre_dead_letters", "Inputs given up on (handler_failed)", ["kind"], registry=reg),
            forged=Counter(
                "cadre_forged_events", "Inputs refused: forged or unsigned (forged_event)", ["kind"], registry=reg
            ),
            conflicts=Counter(
                "cadre_conflicts", "Appends retried after a concurrency conflict", ["kind"], registry=reg
            ),
            workflows=Counter(
                "cadre_workflows", "Workflows by outcome (started, completed, failed)", ["outcome"], registry=reg
            ),
            tool_calls=Counter("cadre_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"], registry=reg),
            consultations=Counter(
                "cadre_consultations",
                "LLM consultations as the callers saw them, by kind, provider and outcome "
                "(granted, denied, cached, failed)",
                ["kind", "provider", "outcome"],
                registry=reg,
            ),
            llm_tokens=Counter(
                "cadre_llm_tokens",
                "Tokens of LLM calls, by provider, kind and direction (input, output, cache_read, cache_write)",
                ["provider", "kind", "direction"],
                registry=reg,
            ),
            llm_usd=Counter(
                "cadre_llm_usd", "USD spent on LLM calls, by provider and kind", ["provider", "kind"], registry=reg
            ),
            budget_decisions=Counter(
                "cadre_budget_decisions",
                "Decisions of the budget actor, by kind, outcome and denial reason",
                ["kind", "outcome", "reason"],
                registry=reg,
            ),
            budget_decision_seconds=Histogram(
                "cadre_budget_decision_seconds",
                "Time the budget actor takes to answer (decide, write the ledger), by operation (consult, settle)",
                ["operation"],
                buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
                registry=reg,
            ),
            budget_overruns=Counter(
                "cadre_budget_overruns",
                "Settlements that billed more than their reservation (the workflow gets no further grant)",
                ["provider", "kind"],
                registry=reg,
            ),
            steps_proposed=Counter(
                "cadre_steps_proposed",
                "Steps proposed, by whether they carry documentation_references (referenced: yes, no); "
                "the share of grounded steps is yes / (yes + no)",
                ["referenced"],
                registry=reg,
            ),
            llm_seconds=Histogram(
                "cadre_llm_seconds",
                "Latency of each LLM call (the SDK's retries included), by kind, provider and model",
                ["kind", "provider", "model"],
                buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
                registry=reg,
            ),
            llm_fallbacks=Counter(
                "cadre_llm_fallbacks",
                "Consultations handed to the next provider of a fallback list, by kind, the provider that "
                "failed (from_provider) and the one asked next (provider)",
                ["kind", "from_provider", "provider"],
                registry=reg,
            ),
            budget_cap=Gauge(
                "cadre_budget_cap_usd",
                "The budget actor's LLM spend caps in USD (cap: daily, the deployment's per UTC day; workflow, "
                "a workflow's whose request sets none), set when it starts: what spend is drawn against",
                ["cap"],
                registry=reg,
            ),
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on a thread (independent of the event loop); return the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)
