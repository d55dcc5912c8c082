"""The budget actor: gates every LLM consultation and keeps its ledger on JetStream.

    <prefix>.budget.consult   Consultation -> Decision   (core request/reply, queue group cadre-budget)
    <prefix>.budget.settle    Settlement   -> Settled    (same queue group)
    <prefix>.ledger           the ledger: a stream of its own, one subject, every decision that changes state

A caller asks before an LLM call and settles after it; the budget grants (reserving the call's
worst case), denies, or answers from the inference cache, and records every decision that
changes its state in the ledger. Its state is a pure fold of the ledger, so a restarted
replica, or a second one, decides like the first. A budget that does not answer means denied.

This package's top is the budget's public face; the code lives in modules named for their roles:

    actors.budget.rules      the rules, pure: gate, worst case, rate limits, caps, settlement, fold
    actors.budget.report     the report ``cadre budget`` prints, pure: a summary of ledger entries
    actors.budget.service    a replica: subscriptions, intake, worker, expiry timer       (serve_budget, BudgetService)
    actors.budget.commit     group commit: decide, answer settlements first, append, fold
    actors.budget.view       a replica's fold of the ledger: catch-up, following other replicas
    actors.budget.ledger     the ledger's I/O: append, read, follow, decode               (read_ledger, LedgerError)
    actors.budget.cache      the inference cache, a KV bucket
    actors.budget.requests   a request in flight, its answer, the decision metrics
    actors.budget.client     the callers' side                                            (BudgetClient)

Prices, token estimates and the worst-case formula are in ``planner/providers/pricing.py``.

See ``docs/budget.md`` for the protocol, the rules and the ledger.
"""

from __future__ import annotations

from cadre.actors.budget.client import BudgetClient
from cadre.actors.budget.ledger import LedgerError, read_ledger
from cadre.actors.budget.service import BudgetService, serve_budget

__all__ = [
    "BudgetClient",
    "BudgetService",
    "LedgerError",
    "read_ledger",
    "serve_budget",
]
