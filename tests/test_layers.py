"""The import direction of docs/architecture.md: bus <- store <- planner <- actors <- cadre."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "bus": set(),
    "store": {"bus"},
    "planner": {"bus"},
    "actors": {"bus", "store", "planner"},
    "cadre": {"bus", "store", "planner", "actors"},
}


def layer(module: str) -> str | None:
    """The layer of an imported module: ``cadre.bus.events`` -> ``bus``, ``cadre.cli`` -> ``cadre``."""
    parts = module.split(".")
    if parts[0] != "cadre":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else "cadre"


def imported_packages(path: Path) -> set[str]:
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(layer(a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(layer(node.module))
    return {name for name in found if name is not None}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down(package: str) -> None:
    bad = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) - ALLOWED[package] - {package})
        for p in (ROOT / package).rglob("*.py")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_every_event_type_is_documented() -> None:
    from cadre.bus.events import EVENT_TYPES

    doc = (ROOT / "docs" / "events.md").read_text()
    missing = [name for name in EVENT_TYPES if f"## `{name}`" not in doc]
    assert missing == []
