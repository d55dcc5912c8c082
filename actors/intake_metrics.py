"""Prometheus metrics of the durable intake (on the registry of the process's other metrics)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge


@dataclass(frozen=True)
class IntakeMetrics:
    stored: Counter
    replies: Counter
    unanswered: Counter
    publish_only_refused: Counter
    backlog: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> IntakeMetrics:
        reg = registry if registry is not None else CollectorRegistry()
        return cls(
            stored=Counter(
                "cadre_intake_stored_requests",
                "Stored requests the intake took from its stream, by outcome "
                "(accepted, existing, invalid, dropped: covered by an overloaded answer)",
                ["outcome"],
                registry=reg,
            ),
            replies=Counter(
                "cadre_intake_replies",
                "Answers sent to requesters, by kind (workflow, existing, invalid, overloaded)",
                ["kind"],
                registry=reg,
            ),
            unanswered=Counter(
                "cadre_intake_unanswered",
                "Requesters left without an answer: their stored request was still being made a workflow "
                "at the end of the wait, or the intake stopped (the request still becomes a workflow)",
                registry=reg,
            ),
            publish_only_refused=Counter(
                "cadre_intake_publish_only_refused",
                "Requests without a reply subject that arrived while the requests stream was full "
                "(the stream refuses them, and NATS cannot tell their publisher)",
                registry=reg,
            ),
            backlog=Gauge("cadre_intake_backlog", "Requests stored and not yet taken by an intake", registry=reg),
        )
