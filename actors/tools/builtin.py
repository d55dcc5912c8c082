"""The implementations of the built-in tools, by name, and a ToolBox that runs them."""

from __future__ import annotations

from collections.abc import Mapping

from cadre.actors.tools.base import ToolBox, ToolConfig, ToolImpl, typed_impl
from cadre.actors.tools.fs import fs_read, fs_restore, fs_write
from cadre.actors.tools.http import http_get
from cadre.actors.tools.sql import sql_query, sql_schema
from cadre.actors.tools.text import text_render
from cadre.planner.builtin_tools import (
    CompensationInput,
    FsReadInput,
    FsWriteInput,
    HttpGetInput,
    SqlQueryInput,
    SqlSchemaInput,
    TextRenderInput,
    builtin_catalog,
)
from cadre.planner.catalog import Catalog


def builtin_impls() -> Mapping[str, ToolImpl]:
    """The implementation of each built-in tool, by the name of its spec."""
    return {
        "sql.schema": typed_impl("sql.schema", SqlSchemaInput, sql_schema),
        "sql.query": typed_impl("sql.query", SqlQueryInput, sql_query),
        "fs.read": typed_impl("fs.read", FsReadInput, fs_read),
        "fs.write": typed_impl("fs.write", FsWriteInput, fs_write),
        "http.get": typed_impl("http.get", HttpGetInput, http_get),
        "text.render": typed_impl("text.render", TextRenderInput, text_render),
    }


def compensation_impls() -> Mapping[str, ToolImpl]:
    """The implementation of each compensating tool (``planner.builtin_tools.compensation_specs``)."""
    return {"fs.restore": typed_impl("fs.restore", CompensationInput, fs_restore)}


def builtin_toolbox(config: ToolConfig, catalog: Catalog | None = None) -> ToolBox:
    """A ToolBox of the built-in tools over ``catalog`` (default: :func:`builtin_catalog`).

    Pass a catalog with a deployment's policy (``Catalog.with_policy``) to prohibit or gate
    tools; built-in tools the catalog leaves out are not callable.
    """
    catalog = builtin_catalog() if catalog is None else catalog
    impls = {name: impl for name, impl in builtin_impls().items() if name in catalog}
    return ToolBox(catalog, impls, config)
