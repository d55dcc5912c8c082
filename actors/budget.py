"""The budget actor: gates every LLM consultation and keeps its ledger on JetStream.

    <prefix>.budget.consult   Consultation -> Decision   (core request/reply, queue group cadre-budget)
    <prefix>.budget.settle    Settlement   -> Settled    (same queue group)
    <prefix>.ledger           the ledger: a stream of its own, one subject, every decision that changes state

A caller asks before an LLM call and settles after it; the budget grants (reserving the call's
worst case), denies, or answers from the inference cache, and records every decision that
changes its state in the ledger. Its state is a pure fold of the ledger, so a restarted
replica, or a second one, decides like the first. A budget that does not answer means denied.

This module is the budget's public face; the code lives in modules named for what they hold:

    actors.budget_rules      the rules, pure: gate, worst case, rate limits, caps, settlement, fold, report
    actors.budget_service    a replica: subscriptions, intake, worker, expiry timer       (serve_budget, BudgetService)
    actors.budget_commit     group commit: decide, answer settlements first, append, fold
    actors.budget_view       a replica's fold of the ledger: catch-up, following other replicas
    actors.budget_ledger     the ledger's I/O: append, read, follow, decode               (read_ledger, LedgerError)
    actors.budget_cache      the inference cache, a KV bucket
    actors.budget_requests   a request in flight, its answer, the decision metrics
    actors.budget_client     the callers' side                                            (BudgetClient)

See ``docs/budget.md`` for the protocol, the rules and the ledger.
"""

from __future__ import annotations

from actors.budget_client import BudgetClient
from actors.budget_ledger import LedgerError, read_ledger
from actors.budget_service import BudgetService, serve_budget

__all__ = [
    "BudgetClient",
    "BudgetService",
    "LedgerError",
    "read_ledger",
    "serve_budget",
]
