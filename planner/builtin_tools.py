"""Specs of the built-in tools: SQLite queries, workspace files, HTTP GET, text rendering.

These are the tools that make cadre useful offline. Each spec is data plus two pydantic
models: the input model forbids unknown fields (a typo such as ``"qeury"`` is an error,
not a silently ignored key) and every field carries a description, because these schemas
are shown to planners, LLM prompts and ``cadre schema``. The implementations live in
``actors/tools/``; nothing here does any I/O.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cadre.planner.catalog import Catalog, Safety, ToolSpec
from cadre.planner.safety import fs_rule, http_rule, sql_rule, text_rule

# A value SQLite hands back or takes as a parameter (BLOBs come back as "0x…" hex strings).
SqlValue = str | int | float | None

MAX_ROWS_LIMIT = 10_000


class _Input(BaseModel):
    """Inputs reject unknown fields, so that a misspelt field is reported instead of ignored."""

    model_config = ConfigDict(extra="forbid")


class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- sql.schema ------------------------------------------------------------------------------


class SqlSchemaInput(_Input):
    """No inputs: the schema is that of the configured database."""


class SqlColumn(_Output):
    name: str = Field(description="column name")
    type: str = Field(description="declared SQLite type (INTEGER, TEXT, REAL, …; may be empty)")


class SqlTable(_Output):
    name: str = Field(description="table name")
    columns: list[SqlColumn] = Field(description="the table's columns in declaration order")


class SqlSchemaOutput(_Output):
    tables: list[SqlTable] = Field(description="every user table of the database, by name")


# --- sql.query -------------------------------------------------------------------------------


class SqlQueryInput(_Input):
    sql: str = Field(description="one SELECT statement (WITH … SELECT allowed); use ? placeholders for params")
    params: list[SqlValue] = Field(default_factory=list, description="values bound to the ? placeholders, in order")
    max_rows: int = Field(
        default=1000, ge=1, le=MAX_ROWS_LIMIT, description="at most this many rows are returned (1..10000)"
    )


class SqlQueryOutput(_Output):
    columns: list[str] = Field(description="result column names, in order")
    rows: list[list[SqlValue]] = Field(description="result rows, each a list of values in column order")
    row_count: int = Field(description="number of rows returned (after truncation)")
    truncated: bool = Field(description="true when the query had more than max_rows rows")


# --- fs.read / fs.write ----------------------------------------------------------------------


class FsReadInput(_Input):
    path: str = Field(description="file path relative to the workspace (e.g. 'reports/q1.md')")
    max_bytes: int = Field(default=1_000_000, ge=1, description="read at most this many bytes")


class FsReadOutput(_Output):
    path: str = Field(description="the file's path relative to the workspace")
    content: str = Field(description="the file's text (UTF-8; undecodable bytes become U+FFFD)")
    bytes: int = Field(description="number of bytes read")
    truncated: bool = Field(default=False, description="true when the file is longer than max_bytes")


class FsWriteInput(_Input):
    path: str = Field(description="file path relative to the workspace; missing folders are created")
    content: str = Field(description="text to write (UTF-8)")
    mode: Literal["overwrite", "append"] = Field(
        default="overwrite", description="'overwrite' replaces the file atomically; 'append' adds to its end"
    )


class FsWriteOutput(_Output):
    path: str = Field(description="the file's path relative to the workspace")
    bytes_written: int = Field(description="number of bytes written")
    already_done: bool = Field(description="true when this step had already written the file (nothing written now)")


class CompensationInput(_Input):
    """What a compensating tool is given: the call it undoes."""

    tool: str = Field(description="the tool whose call is undone")
    inputs: dict[str, Any] = Field(default_factory=dict, description="the inputs that call ran with")
    output: dict[str, Any] = Field(default_factory=dict, description="what that call returned")
    key: str = Field(description="the idempotency key that call ran with")


class FsRestoreOutput(_Output):
    path: str = Field(description="the file's path relative to the workspace")
    restored: Literal["content", "removed"] = Field(
        description="'content': the file holds what it held before the write; 'removed': it did not exist before"
    )
    already_done: bool = Field(description="true when this compensation had already run (nothing done now)")


# --- http.get --------------------------------------------------------------------------------


class HttpGetInput(_Input):
    url: str = Field(description="http(s) URL; must start with one of the deployment's allowed prefixes")
    headers: dict[str, str] = Field(default_factory=dict, description="request headers")
    max_bytes: int = Field(default=1_000_000, ge=1, description="read at most this many bytes of the body")


class HttpGetOutput(_Output):
    status: int = Field(description="HTTP status code (non-2xx statuses are returned, not raised)")
    headers: dict[str, str] = Field(description="response headers, names in lower case")
    body: str = Field(description="response body as text (UTF-8; undecodable bytes become U+FFFD)")
    truncated: bool = Field(description="true when the body was longer than max_bytes")


# --- text.render -----------------------------------------------------------------------------


class TextRenderInput(_Input):
    template: str = Field(
        description=(
            "text with {name} placeholders (Python str.format syntax): {a.b} and {a[b]} look up keys, "
            "{rows[0]} a list index; no attribute access. Conversions: {x!t} renders an sql.query output "
            "(or a list of objects) as a Markdown table, {x!j} as compact JSON. Objects and lists render "
            "as JSON. Write {{ and }} for literal braces."
        )
    )
    values: dict[str, JsonValue] = Field(default_factory=dict, description="the values the placeholders name")


class TextRenderOutput(_Output):
    text: str = Field(description="the rendered text")


def builtin_specs() -> tuple[ToolSpec, ...]:
    """The six built-in tool specs, in catalog order."""
    return (
        ToolSpec(
            name="sql.schema",
            description=(
                "List the tables of the configured SQLite database with their columns and declared types. "
                "Read-only. Use it before writing sql.query statements."
            ),
            input_model=SqlSchemaInput,
            output_model=SqlSchemaOutput,
        ),
        ToolSpec(
            name="sql.query",
            description=(
                "Run one read-only SELECT statement on the configured SQLite database and return columns and rows. "
                "Writes of any kind (INSERT, UPDATE, DELETE, CREATE, DROP, ATTACH, PRAGMA) are refused. "
                "Bind values with ? placeholders and params. At most max_rows rows (default 1000, up to 10000) "
                "are returned; truncated says whether there were more. Dates are TEXT 'YYYY-MM-DD': "
                "use strftime('%Y', col) or BETWEEN."
            ),
            input_model=SqlQueryInput,
            output_model=SqlQueryOutput,
            rule=sql_rule,
        ),
        ToolSpec(
            name="fs.read",
            description=(
                "Read a text file from the workspace folder (paths relative to it; nothing outside it, "
                "no symlinks leading out). Returns at most max_bytes bytes (default 1 MB)."
            ),
            input_model=FsReadInput,
            output_model=FsReadOutput,
            rule=fs_rule,
        ),
        ToolSpec(
            name="fs.write",
            description=(
                "Write a text file in the workspace folder, creating missing folders: 'overwrite' replaces "
                "the file atomically, 'append' adds to its end. Runs exactly once per step: a retried step "
                "returns already_done=true and writes nothing again."
            ),
            input_model=FsWriteInput,
            output_model=FsWriteOutput,
            rule=fs_rule,
            safety=Safety.SIDE_EFFECT,
            compensation="fs.restore",
        ),
        ToolSpec(
            name="http.get",
            description=(
                "GET a URL and return status, headers and body text. Only URLs under the deployment's allowed "
                "prefixes (CADRE_HTTP_ALLOW) may be fetched, redirects included. Non-2xx statuses are returned "
                "as results; connection failures are errors. The body is cut at max_bytes (default 1 MB)."
            ),
            input_model=HttpGetInput,
            output_model=HttpGetOutput,
            rule=http_rule,
            timeout_s=15.0,
        ),
        ToolSpec(
            name="text.render",
            description=(
                "Fill a text template with values (no code runs): {name}, {a.b}, {rows[0]}; {x!t} renders an "
                "sql.query output as a Markdown table and {x!j} any value as JSON. Use it to turn query "
                "results into reports."
            ),
            input_model=TextRenderInput,
            output_model=TextRenderOutput,
            rule=text_rule,
        ),
    )


def compensation_specs() -> tuple[ToolSpec, ...]:
    """The tools that undo the built-in ones: not in the catalog (nothing plans them); the agents'
    toolbox has them, for a workflow that compensates when it fails."""
    return (
        ToolSpec(
            name="fs.restore",
            description="Undo one fs.write: put back what the file held before it (or remove a file it created).",
            input_model=CompensationInput,
            output_model=FsRestoreOutput,
            safety=Safety.SIDE_EFFECT,
        ),
    )


def builtin_catalog() -> Catalog:
    """A catalog of the six built-in tools (sql.schema, sql.query, fs.read, fs.write, http.get, text.render)."""
    return Catalog(builtin_specs())


__all__ = [
    "MAX_ROWS_LIMIT",
    "CompensationInput",
    "FsReadInput",
    "FsReadOutput",
    "FsRestoreOutput",
    "FsWriteInput",
    "FsWriteOutput",
    "HttpGetInput",
    "HttpGetOutput",
    "SqlColumn",
    "SqlQueryInput",
    "SqlQueryOutput",
    "SqlSchemaInput",
    "SqlSchemaOutput",
    "SqlTable",
    "SqlValue",
    "TextRenderInput",
    "TextRenderOutput",
    "builtin_catalog",
    "builtin_specs",
    "compensation_specs",
]
