"""Installed, cadre is one namespace: every folder that is a package is mapped under ``cadre.``."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("bus", "store", "planner", "actors")


def test_every_package_folder_is_installed_under_cadre() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {"cadre": "cadre", **{f"cadre.{name}": name for name in LAYERS}}
    found = {"cadre"} | {
        "cadre." + ".".join(init.parent.relative_to(ROOT).parts)
        for name in LAYERS
        for init in (ROOT / name).rglob("__init__.py")
    }
    found |= {
        "cadre." + ".".join(i.parent.relative_to(ROOT / "cadre").parts) for i in (ROOT / "cadre").rglob("*/__init__.py")
    }
    assert sorted(config["packages"]) == sorted(found)


def test_no_module_imports_the_bare_folder_names() -> None:
    bare = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in (*LAYERS, "cadre", "tests", "bench", "examples")
        if (ROOT / top).is_dir()
        for path in (ROOT / top).rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(tuple(f"{kw} {name}" for kw in ("from", "import") for name in LAYERS))
        and line.lstrip().split()[1].split(".")[0] in LAYERS
    ]
    assert bare == []
