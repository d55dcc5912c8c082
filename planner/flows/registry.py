"""The deployment's flows: the files of one folder (``CADRE_FLOWS``), each loaded and checked.

:func:`load_folder` reads every ``*.yaml``, ``*.yml`` and ``*.json`` file of the folder (in name
order), checks each flow against the catalog (:func:`planner.flows.check.check_flow`), then the
flows together (sub-flows registered, no cycle between flows, nesting within the child depth:
:func:`planner.flows.nesting.check_nesting`) and raises :class:`FlowsInvalid` listing every
problem of every file: a deployment does not start with a flow it cannot run. The one function
of the flows package that reads files.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cadre.planner.catalog import Catalog
from cadre.planner.children import DEFAULT_MAX_DEPTH
from cadre.planner.flows.check import FlowProblem, check_flow
from cadre.planner.flows.model import Flow, FlowError, load_flow
from cadre.planner.flows.nesting import check_nesting

__all__ = ["FlowSet", "FlowsInvalid", "load_folder"]

SUFFIXES = (".yaml", ".yml", ".json")


class FlowsInvalid(FlowError):
    """Flows that failed their load-time check; ``problems``: per file, the problems found."""

    def __init__(self, problems: Mapping[str, list[FlowProblem]]) -> None:
        self.problems = dict(problems)
        lines = [f"{src}: {p}" for src, ps in self.problems.items() for p in ps]
        super().__init__(f"{len(lines)} problem(s) in the flows: " + "; ".join(lines))


@dataclass(frozen=True, slots=True)
class FlowSet(Mapping[str, Flow]):
    """The loaded flows by name, and the file each came from."""

    flows: Mapping[str, Flow]
    sources: Mapping[str, str]

    def __getitem__(self, name: str) -> Flow:
        return self.flows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.flows))

    def __len__(self) -> int:
        return len(self.flows)


def load_folder(folder: Path, catalog: Catalog, max_depth: int = DEFAULT_MAX_DEPTH) -> FlowSet:
    """The checked flows of ``folder`` (module docstring); ``max_depth``: how deep sub-flows may nest
    (``CADRE_CHILD_MAX_DEPTH``, :mod:`planner.flows.nesting`)."""
    if not folder.is_dir():
        raise FlowError(f"the flows folder {str(folder)!r} is not a directory (CADRE_FLOWS)")
    flows: dict[str, Flow] = {}
    sources: dict[str, str] = {}
    problems: dict[str, list[FlowProblem]] = {}
    for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES and p.is_file()):
        try:
            flow = load_flow(path)
        except FlowError as exc:
            problems[str(path)] = [FlowProblem("unreadable", str(exc))]
            continue
        found = check_flow(flow, catalog)
        if flow.name in flows:
            found.append(
                FlowProblem(
                    "duplicate_flow",
                    f"flow {flow.name!r} is also defined in {sources[flow.name]}",
                    field="name",
                    fix="rename one",
                )
            )
        if found:
            problems[str(path)] = found
            continue
        flows[flow.name] = flow
        sources[flow.name] = str(path)
    if not problems:
        for name, found in check_nesting(flows, catalog, max_depth).items():
            problems[sources[name]] = found
    if problems:
        raise FlowsInvalid(problems)
    return FlowSet(flows, sources)
