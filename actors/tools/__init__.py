"""The agents' tools: the ToolBox seam and the built-in tools (SQLite, workspace files, HTTP, text).

The specs (names, schemas, safety) are in ``planner/builtin_tools.py``; this package runs them.
"""

from cadre.actors.tools.base import ToolBox, ToolCall, ToolConfig, ToolError, ToolImpl, typed_impl
from cadre.actors.tools.builtin import builtin_impls, builtin_toolbox
from cadre.actors.tools.fs import resolve_in_workspace
from cadre.actors.tools.sample import ensure_sample_database, sample_sql
from cadre.actors.tools.text import markdown_table, render_template
from cadre.planner.safety import MARKER_DIR, normalise_url

__all__ = [
    "MARKER_DIR",
    "ToolBox",
    "ToolCall",
    "ToolConfig",
    "ToolError",
    "ToolImpl",
    "builtin_impls",
    "builtin_toolbox",
    "ensure_sample_database",
    "markdown_table",
    "normalise_url",
    "render_template",
    "resolve_in_workspace",
    "sample_sql",
    "typed_impl",
]
