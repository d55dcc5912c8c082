"""Grounding: the FTS5 documentation index, past plans as examples, and a catalog of 200 tools
cut to what a request needs, in the planning prompt and in the record a replay serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
from pydantic import create_model

from cadre.actors.answers import LiveAnswers, RecordedAnswers, ReplayDivergence
from cadre.actors.context import Outside
from cadre.actors.grounding import Grounder, GroundingLimits
from cadre.bus.effects import BudgetDecided, Example, Grounded, Passage
from cadre.bus.ledger import Decision
from cadre.bus.plan import Plan, Task
from cadre.grounding_config import DocsDirError, grounder_for
from cadre.planner.builtin_tools import builtin_specs
from cadre.planner.catalog import Catalog, ToolSpec
from cadre.planner.docs_index import DocsIndex, bounded, fts_query, load_folder, split_markdown
from cadre.planner.library import LibraryEntry
from cadre.planner.providers.agent_prompts import decompose_request
from cadre.planner.providers.pricing import estimate_input_tokens
from cadre.planner.providers.prompts import adapt_request, plan_request
from cadre.settings import Settings
from tests.doc_tools import TOOLS as DOC_TOOLS

# -- the index ----------------------------------------------------------------------------------

GUIDE = """\
Intro text before any heading.

# Deploying the worker

Run one worker per node.

## Retries

Rate limits (HTTP 429) honour the Retry-After header; the worker retries with exponential backoff.

```
# not a heading: a comment in a code fence
```

## Tracing

Spans go to the OTLP endpoint.
"""

TOPICS = [
    ("billing", "Invoices are issued monthly; a refund needs a credit note."),
    ("shipping", "Parcels leave the warehouse daily at noon; tracking numbers come by email."),
    ("returns", "A customer may return goods within 30 days with the receipt."),
    ("payroll", "Salaries are paid on the last working day of the month."),
    ("security", "Rotate API keys every quarter; never paste them in tickets."),
    ("backups", "The database is backed up nightly and kept for 35 days."),
    ("holidays", "The office is closed on public holidays; support answers by email."),
    ("onboarding", "New staff get a laptop and an account on their first day."),
    ("inventory", "Stock is counted every Friday; shortages go to purchasing."),
    ("reports", "Quarterly reports list the top customers by revenue."),
]


def topic_docs() -> list[Passage]:
    return [p for name, text in TOPICS for p in split_markdown(f"# {name.title()}\n\n{text}\n", f"{name}.md")]


def test_markdown_is_cut_at_headings_with_their_trail_and_code_fences_kept_whole() -> None:
    passages = split_markdown(GUIDE, "deploy.md")
    assert [p.heading for p in passages] == [
        "deploy.md",
        "Deploying the worker",
        "Deploying the worker > Retries",
        "Deploying the worker > Tracing",
    ]
    assert passages[2].ref == "deploy.md#Deploying the worker > Retries"
    assert "# not a heading" in passages[2].text


@pytest.mark.parametrize("text", ["what's new?", "docker-compose", "AND", "C++ (tests)", 'say "hi', "near:x"])
def test_user_text_never_reaches_match_as_syntax(text: str) -> None:
    index = DocsIndex(topic_docs())
    index.search(text)  # no sqlite3.OperationalError
    assert index.tools(text, limit=3) == []


def test_an_all_stop_words_query_searches_nothing() -> None:
    assert fts_query("how do I do it?") == ""
    assert DocsIndex(topic_docs()).search("how do I do it?") == []


def test_the_most_relevant_passage_comes_first_with_stemming() -> None:
    index = DocsIndex([*split_markdown(GUIDE, "deploy.md"), *topic_docs()])
    hits = index.search("How does the worker retry when it is rate limited?", limit=3)
    assert hits[0].passage.ref == "deploy.md#Deploying the worker > Retries"
    assert [h.passage.source for h in index.search("refunds and invoices", limit=1)] == ["billing.md"]


def test_a_tools_own_documentation_comes_first_for_its_steps() -> None:
    index = DocsIndex(topic_docs(), Catalog([spec for spec, _ in DOC_TOOLS]))
    hits = index.search("distance from Lyon to Turin", limit=4, tool="geo.distance")
    assert [h.passage.ref for h in hits[:3]] == [
        "tool:geo.distance#geo.distance",
        "tool:geo.distance#geo.distance > Inputs",
        "tool:geo.distance#geo.distance > Pitfalls",
    ]


def test_a_folder_of_documents_is_read_recursively(tmp_path: Path) -> None:
    (tmp_path / "ops").mkdir()
    (tmp_path / "ops" / "deploy.md").write_text(GUIDE)
    (tmp_path / "notes.txt").write_text("# not markdown\nignored")
    refs = [p.ref for p in load_folder(tmp_path)]
    assert "ops/deploy.md#Deploying the worker > Tracing" in refs
    assert all(r.startswith("ops/deploy.md#") for r in refs)


def test_passages_are_bounded_and_the_best_is_cut_rather_than_dropped() -> None:
    long = Passage(ref="a#x", source="a", heading="x", text="word " * 400)
    short = Passage(ref="b#y", source="b", heading="y", text="short")
    assert [p.ref for p in bounded([short, long], 100)] == ["b#y"]
    [cut] = bounded([long, short], 300)
    assert len(cut.text) <= 300
    assert cut.text.endswith("[...]")


# -- past plans as examples ---------------------------------------------------------------------


def entry(name: str, request: str, tool: str = "sql.query") -> LibraryEntry:
    plan = Plan(nodes=(Task(id="t", tool=tool, inputs={"sql": "SELECT 1"}),))
    return LibraryEntry(name=name, request=request, plan=plan, source=f"workflow:{name}", origin="model")


class Entries:
    def __init__(self, entries: list[LibraryEntry]) -> None:
        self.entries = entries
        self.refreshed = 0

    async def refresh(self) -> None:
        self.refreshed += 1


LIBRARY = [
    entry("top_customers", "list the top 5 customers by revenue in 2023"),
    entry("orders_per_month", "count the orders of each month of 2024"),
    entry("weather", "what is the weather in Lyon tomorrow", tool="http.get"),
    entry("same", "list the best customers by revenue"),
]


async def test_the_most_similar_completed_plans_are_the_examples_bounded() -> None:
    library = Entries(LIBRARY)
    grounder = Grounder(DocsIndex([]), library, GroundingLimits(examples=2))
    g = await grounder.ground("plan", "list the top 10 customers by revenue in 2022", None)
    assert library.refreshed == 1  # completions since the last search join first
    assert [e.name for e in g.examples] == ["top_customers", "same"]
    assert g.tools is None  # a small catalog is listed whole
    tight = Grounder(DocsIndex([]), library, GroundingLimits(examples=3, example_chars=400))
    assert len((await tight.ground("plan", "list the top 10 customers by revenue in 2022", None)).examples) == 1
    assert (await grounder.ground("decompose", "list the top customers", None)).examples == ()


async def test_the_same_request_planned_before_is_not_an_example_so_the_cache_still_answers() -> None:
    grounder = Grounder(DocsIndex([]), Entries(LIBRARY), GroundingLimits(examples=3))
    g = await grounder.ground("plan", "List the best customers, by revenue", None)
    assert "same" not in [e.name for e in g.examples]


def test_examples_and_passages_are_in_the_prompt_and_an_empty_grounding_changes_nothing() -> None:
    catalog = Catalog(builtin_specs())
    bare = plan_request("count the customers", catalog.describe(), "m", 100)
    empty = Grounded(call="plan", query=Grounded.query_of("count the customers"))
    assert plan_request("count the customers", catalog.describe(), "m", 100, empty) == bare
    example = Example(name="top_customers", source="x", request="top customers", plan=LIBRARY[0].plan)
    passage = Passage(ref="reports.md#Reports", source="reports.md", heading="Reports", text="Quarterly reports.")
    grounded = msgspec.structs.replace(empty, examples=(example,), passages=(passage,))
    ask = plan_request("count the customers", catalog.describe(), "m", 100, grounded)
    assert ask.system == bare.system
    assert '<example name="top_customers">' in ask.prompt
    assert '<passage ref="reports.md#Reports">\nQuarterly reports.' in ask.prompt
    assert ask.prompt.endswith(bare.prompt)


# -- a catalog of 200 tools ---------------------------------------------------------------------

DOMAINS = [
    "weather", "invoice", "shipment", "ticket", "calendar", "payroll", "inventory", "contact", "email", "sms",
    "forum", "survey", "expense", "contract", "vehicle", "badge", "printer", "library", "parking", "canteen",
]  # fmt: skip
VERBS = {
    "lookup": "look up one",
    "create": "create a new",
    "list": "list the",
    "delete": "delete a",
    "update": "change an existing",
    "export": "export to CSV the",
    "archive": "archive old",
    "summarize": "summarize the",
    "count": "count the",
    "send": "send out a",
}
PROMPT_BOUND = 6_000
"""Estimated input tokens a planning prompt may take, whatever the catalog's size."""


def generated_catalog() -> Catalog:
    specs = list(builtin_specs())
    for domain in DOMAINS:
        for verb in VERBS:
            fields: dict[str, Any] = {f"{domain}_id": (str, ...), "note": (str, "")}
            if verb in ("create", "update", "send"):
                fields.update({"body": (str, ...), "recipients": (list[str], [])})
            inputs = create_model(f"{domain.title()}{verb.title()}In", **fields)
            outputs = create_model(
                f"{domain.title()}{verb.title()}Out", items=(list[dict[str, Any]], []), total=(int, 0)
            )
            text = f"{VERBS[verb]} {domain} record(s) of the {domain} system, with paging and filters"
            specs.append(ToolSpec(f"{domain}.{verb}", text, inputs, outputs))
    return Catalog(specs)


async def test_a_catalog_of_200_tools_gives_a_bounded_prompt_with_the_tools_the_request_needs() -> None:
    catalog = generated_catalog()
    assert len(catalog) >= 200
    grounder = Grounder(DocsIndex([], catalog), None, GroundingLimits(catalog_threshold=40, catalog_tools=12))
    cases = {
        "look up tomorrow's weather in Lyon and send it by email to the team": {"weather.lookup", "email.send"},
        "count the open tickets and export the payroll of March": {"ticket.count", "payroll.export"},
        "archive the expired contracts": {"contract.archive"},
        "run this SQL query on the shop database: SELECT 1": {"sql.query"},
    }
    everything = plan_request("x", catalog.describe(), "m", 100)
    for request, needed in cases.items():
        g = await grounder.ground("plan", request, None)
        assert g.tools is not None
        assert len(g.tools) <= 12
        ask = plan_request(request, catalog.describe(), "m", 100, g)
        listed = {line.split('"name":"')[1].split('"')[0] for line in ask.system.splitlines() if '"name":"' in line}
        assert needed <= listed, (request, sorted(listed))
        assert estimate_input_tokens(ask) < PROMPT_BOUND < estimate_input_tokens(everything)


async def test_a_retrieved_catalog_keeps_the_tools_of_the_examples() -> None:
    catalog = generated_catalog()
    library = Entries([entry("forecast", "weather forecast for a city", tool="http.get")])
    grounder = Grounder(DocsIndex([], catalog), library, GroundingLimits(catalog_threshold=40))
    g = await grounder.ground("plan", "the weather forecast for Turin", None)
    assert g.tools is not None
    assert {"http.get", "weather.lookup"} <= set(g.tools)


# -- recorded, served back ----------------------------------------------------------------------


async def test_a_recorded_grounding_is_served_and_a_record_without_one_grounds_in_nothing() -> None:
    g = Grounded(
        call="plan",
        query=Grounded.query_of("q"),
        passages=(Passage(ref="a#b", source="a", heading="b", text="t"),),
    )
    decided = BudgetDecided(call="plan", cache_key="", decision=Decision(outcome="denied", reason="over_workflow_cap"))
    assert await RecordedAnswers([g, decided]).ground("plan", "q", None) == g
    assert await RecordedAnswers([decided]).ground("plan", "q", None) is None  # recorded before grounding
    with pytest.raises(ReplayDivergence, match="the handler asked ground plan:"):
        await RecordedAnswers([g]).ground("plan", "another request", None)


async def test_what_the_live_side_records_the_recorded_side_serves_back() -> None:
    catalog = Catalog([*builtin_specs(), *(spec for spec, _ in DOC_TOOLS)])
    grounder = Grounder(DocsIndex(topic_docs(), catalog), Entries(LIBRARY), GroundingLimits())
    live = LiveAnswers(Outside(grounding=grounder))
    request = "the top customers by revenue, from the quarterly reports"
    effect = await live.ground("plan", request, None)
    assert effect is not None
    assert effect.examples
    assert effect.passages[0].ref == "reports.md#Reports"
    assert (
        await RecordedAnswers([effect]).ground("plan", "the top customers by revenue, from the quarterly reports", None)
        == effect
    )
    assert await live.ground("steps", "how do I do it", None) is None  # nothing to ground in: nothing recorded
    assert await LiveAnswers(Outside()).ground("plan", "anything", None) is None  # no grounding in this process


INPUTS = Passage(ref="tool:geo.distance#Inputs", source="tool:geo.distance", heading="Inputs", text="cities")


def test_the_decompose_prompt_gets_the_passages_and_only_the_retrieved_tools() -> None:
    catalog = Catalog([*builtin_specs(), *(spec for spec, _ in DOC_TOOLS)])
    task = Task(id="far", description="distance from Lyon to Turin")
    bare = decompose_request(task, catalog, attempt=1, upstream={})
    g = Grounded(
        call="decompose",
        query=Grounded.query_of("x"),
        passages=(
            Passage(ref="tool:geo.distance#Inputs", source="tool:geo.distance", heading="Inputs", text="cities"),
        ),
        tools=("geo.distance",),
    )
    ask = decompose_request(task, catalog, attempt=1, upstream={}, grounding=g)
    assert '<passage ref="tool:geo.distance#Inputs">\ncities\n</passage>' in ask.prompt
    assert ask.prompt.endswith(bare.prompt)
    assert '"name":"geo.distance"' in ask.system
    assert '"name":"sql.query"' in bare.system
    assert '"name":"sql.query"' not in ask.system


async def test_a_re_plan_of_a_large_catalog_lists_the_retrieved_tools_and_the_current_plans() -> None:
    catalog = generated_catalog()
    grounder = Grounder(DocsIndex([], catalog), Entries(LIBRARY), GroundingLimits())
    g = await grounder.ground("adapt", "archive the expired contracts", None)
    assert g.examples == ()  # examples are for the first plan
    current = msgspec.convert({"nodes": [{"id": "a", "tool": "badge.export", "inputs": {}}]}, Plan)
    ask = adapt_request("archive the expired contracts", current, {}, "a failed", catalog.describe(), grounding=g)
    assert '"name":"contract.archive"' in ask.system
    assert '"name":"badge.export"' in ask.system  # the current plan's tool
    assert estimate_input_tokens(ask) < PROMPT_BOUND
    bare = adapt_request("archive the expired contracts", current, {}, "a failed", catalog.describe())
    assert estimate_input_tokens(bare) > PROMPT_BOUND


def test_a_docs_dir_that_is_not_a_folder_is_a_clear_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "notes.md"
    not_a_folder.write_text("# x\n")
    settings = Settings(data_dir=tmp_path, docs_dir=not_a_folder)
    with pytest.raises(DocsDirError, match="is not a folder") as raised:
        grounder_for(settings, Catalog(builtin_specs()), None)
    assert raised.value.code == "docs_dir_invalid"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(GUIDE)
    grounder = grounder_for(Settings(data_dir=tmp_path, docs_dir=tmp_path / "docs"), Catalog(builtin_specs()), None)
    assert len(grounder.index) == 4
