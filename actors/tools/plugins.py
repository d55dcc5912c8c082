"""Tools of your own: Python modules named in the ``CADRE_TOOL_MODULES`` setting.

A tool module defines ``TOOLS``, a sequence of ``(ToolSpec, ToolImpl)`` pairs. Modules are
named by the operator in settings (like entry points), never taken from events or plans.

    # acme_tools.py
    TOOLS = [(ToolSpec(name="crm.lookup", description=..., input_model=In, output_model=Out), impl)]
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping, Sequence

from cadre.actors.tools.base import ToolImpl
from cadre.bus.errors import CadreError
from cadre.planner.catalog import ToolSpec


class ToolModuleError(CadreError):
    code = "tool_module_error"


def load_tool_modules(names: Iterable[str]) -> list[tuple[ToolSpec, ToolImpl]]:
    """The ``TOOLS`` of each named module, checked."""
    found: list[tuple[ToolSpec, ToolImpl]] = []
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ToolModuleError(f"cannot import tool module {name!r} (CADRE_TOOL_MODULES): {exc}") from None
        tools = getattr(module, "TOOLS", None)
        if not isinstance(tools, Sequence):
            raise ToolModuleError(f"tool module {name!r} defines no TOOLS list of (ToolSpec, implementation) pairs")
        for i, item in enumerate(tools):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], ToolSpec) and callable(item[1])):
                raise ToolModuleError(f"{name}.TOOLS[{i}] is not a (ToolSpec, implementation) pair")
            found.append(item)
    return found


def plugin_impls(tools: Sequence[tuple[ToolSpec, ToolImpl]]) -> Mapping[str, ToolImpl]:
    return {spec.name: impl for spec, impl in tools}
