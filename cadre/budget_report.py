"""``cadre budget`` for people: the budget's report (``actors.budget.report.Report``) as tables."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from cadre.actors.budget.report import Report, SpendLine


def render_report(r: Report, ledger: str) -> Iterator[str]:
    """The report's lines: today against the daily cap, spend by workflow, provider and kind,
    denials by reason, cache hits, expiries and overruns, open reservations."""
    about = f" (workflow {r.workflow_id})" if r.workflow_id else ""
    yield f"budget ledger {ledger}: {r.entries} entries{about}"
    if r.today is not None:
        t = r.today
        cap = f" of the ${t.cap_usd:.4f} daily cap" if t.cap_usd is not None else ""
        share = f" ({(t.settled_usd + t.reserved_usd) / t.cap_usd:.1%})" if t.cap_usd else ""
        yield (
            f"today {t.day.isoformat()} (UTC, every workflow): settled ${t.settled_usd:.4f} "
            f"+ reserved ${t.reserved_usd:.4f}{cap}{share}"
        )
    yield f"spent: ${r.spend_usd:.4f}"
    for title, lines in (("workflow", r.by_workflow), ("provider", r.by_provider), ("kind", r.by_kind)):
        yield ""
        yield from _spend_table(title, lines)
    yield ""
    yield "denials by reason" + ("" if r.denials else ": none")
    for reason, n in sorted(r.denials.items(), key=lambda x: (-x[1], x[0])):
        yield f"  {reason:<20} {n:>8,}"
    yield ""
    yield f"cache hits: {r.cache_hits:,}"
    yield f"expired reservations (charged at their worst case): {r.expired:,}"
    yield f"calls that cost more than they reserved: {r.overruns:,}"
    yield ""
    yield f"open reservations: {len(r.open_reservations)}"
    if r.open_reservations:
        head = f"  {'reservation':<28} {'workflow':<20} {'kind':<10} {'provider':<10} {'model':<24} {'USD':>9}"
        yield head + "  expires (UTC)"
        for o in r.open_reservations:
            yield (
                f"  {o.reservation_id[:28]:<28} {o.workflow_id[:20]:<20} {o.kind:<10} {o.provider[:10]:<10} "
                f"{o.model[:24]:<24} {o.reserved_usd:>9.4f}  {o.expires_at.strftime('%Y-%m-%d %H:%M:%S')}"
            )


def _spend_table(title: str, lines: Mapping[str, SpendLine]) -> Iterator[str]:
    yield f"spend by {title}" + ("" if lines else ": none")
    if not lines:
        return
    caps = title == "workflow"
    yield f"  {title:<24} {'calls':>7} {'input tok':>12} {'output tok':>12} {'USD':>10}" + (
        f" {'cap USD':>10}" if caps else ""
    )
    for key, line in sorted(lines.items(), key=lambda x: (-x[1].cost_usd, x[0])):
        cap = "" if not caps else f" {line.cap_usd:>10.4f}" if line.cap_usd is not None else f" {'-':>10}"
        yield (
            f"  {key[:24]:<24} {line.calls:>7,} {line.input_tokens:>12,} {line.output_tokens:>12,} "
            f"{line.cost_usd:>10.4f}{cap}"
        )
