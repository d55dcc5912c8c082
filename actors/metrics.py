"""Prometheus metrics of an actor process (served on ``/metrics`` when a port is set)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    events_handled: Counter
    handler_seconds: Histogram
    redeliveries: Counter
    dead_letters: Counter
    conflicts: Counter
    workflows: Counter
    tool_calls: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> Metrics:
        reg = registry if registry is not None else CollectorRegistry()
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
            conflicts=Counter(
                "cadre_conflicts", "Appends retried after a concurrency conflict", ["kind"], registry=reg
            ),
            workflows=Counter(
                "cadre_workflows", "Workflows by outcome (started, completed, failed)", ["outcome"], registry=reg
            ),
            tool_calls=Counter("cadre_tool_calls", "Tool calls by tool and outcome", ["tool", "outcome"], registry=reg),
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on a thread (independent of the event loop); return the bound port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_port)
