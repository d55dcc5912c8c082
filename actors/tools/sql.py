"""sql.schema and sql.query: read-only SQLite.

Four locks keep the database read-only, each enough on its own for the common cases: the
statement passes :func:`planner.safety.sql_problem` (the rule the validator checks before
anything runs; the ToolBox checks it again), the file is opened ``mode=ro``, ``PRAGMA
query_only`` is on, and the same authorizer denies every action but reading (SELECT, READ,
FUNCTION but ``load_extension`` and its kind, RECURSIVE; and ``PRAGMA table_info`` for
sql.schema only). The authorizer decides; the error names the refused statement by its
leading keywords (``DROP TABLE``) or by the action the authorizer denied (``INSERT on 'orders'``).

A query runs in a worker thread; when the call is cancelled (its time limit) the
connection is interrupted, so a runaway query does not keep the thread busy.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cadre.actors.tools.base import ToolCall, ToolConfig, ToolError
from cadre.planner.builtin_tools import (
    SqlColumn,
    SqlQueryInput,
    SqlQueryOutput,
    SqlSchemaInput,
    SqlSchemaOutput,
    SqlTable,
    SqlValue,
)
from cadre.planner.safety import ReadGuard, statement_kind

_T = TypeVar("_T")

_SCHEMA_PRAGMAS = frozenset({"table_info"})


class _Interrupter:
    """Lets the event loop interrupt a connection that a worker thread is using."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._interrupted = False

    def attach(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            # sqlite3_interrupt only stops statements already running, so a call that was
            # cancelled before its thread got here must not start one.
            if self._interrupted:
                raise sqlite3.OperationalError("interrupted")
            self._conn = conn

    def detach(self) -> None:
        with self._lock:
            self._conn = None

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            if self._conn is not None:
                self._conn.interrupt()


def _database(tool: str, config: ToolConfig) -> Path:
    if config.database is None:
        raise ToolError(tool, "not_configured", f"{tool} needs a database: set CADRE_DATABASE to a SQLite file")
    return config.database


def _connect(tool: str, path: Path, guard: ReadGuard) -> sqlite3.Connection:
    if not path.is_file():
        raise ToolError(tool, "not_found", f"database {str(path)!r} does not exist")
    # check_same_thread=False: interrupt() comes from the event loop's thread.
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA query_only = ON")
    conn.set_authorizer(guard)
    return conn


def _sql_failure(tool: str, guard: ReadGuard, err: sqlite3.Error, sql: str | None) -> ToolError:
    if guard.denied is not None:
        kind = (statement_kind(sql) if sql else None) or guard.denied
        return ToolError(tool, "write_refused", f"{tool} is read-only: {kind} is refused; send one SELECT statement")
    return ToolError(tool, "sql_error", f"SQLite refused the statement: {err}")


async def _run(tool: str, config: ToolConfig, *, sql: str | None, work: Callable[[sqlite3.Connection], _T]) -> _T:
    """Run ``work`` on a read-only connection in a thread; ``sql`` is None for sql.schema."""
    path = _database(tool, config)
    guard = ReadGuard(_SCHEMA_PRAGMAS if sql is None else frozenset())
    interrupter = _Interrupter()

    def in_thread() -> _T:
        conn = _connect(tool, path, guard)
        try:
            interrupter.attach(conn)
            return work(conn)
        except sqlite3.Error as e:
            raise _sql_failure(tool, guard, e, sql) from e
        finally:
            interrupter.detach()
            conn.close()

    try:
        return await asyncio.to_thread(in_thread)
    except asyncio.CancelledError:
        interrupter.interrupt()
        raise


def _json_value(v: object) -> SqlValue:
    if v is None or isinstance(v, str | int | float):
        return v
    if isinstance(v, bytes):
        return "0x" + v.hex()
    raise TypeError(f"sqlite3 returned a {type(v).__name__}")  # only with custom converters, which we never register


async def sql_schema(inputs: SqlSchemaInput, config: ToolConfig, call: ToolCall) -> SqlSchemaOutput:
    """The user tables of the configured database and their columns, by table name."""

    def work(conn: sqlite3.Connection) -> SqlSchemaOutput:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
                "ORDER BY name"
            )
        ]
        tables = []
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            cols = [SqlColumn(name=r[1], type=r[2]) for r in conn.execute(f"PRAGMA table_info({quoted})")]
            tables.append(SqlTable(name=name, columns=cols))
        return SqlSchemaOutput(tables=tables)

    return await _run("sql.schema", config, sql=None, work=work)


async def sql_query(inputs: SqlQueryInput, config: ToolConfig, call: ToolCall) -> SqlQueryOutput:
    """Run one read-only statement; at most ``max_rows`` rows, ``truncated`` when there were more."""

    def work(conn: sqlite3.Connection) -> SqlQueryOutput:
        cur = conn.execute(inputs.sql, inputs.params)
        columns = [d[0] for d in cur.description or ()]
        fetched = cur.fetchmany(inputs.max_rows + 1)
        truncated = len(fetched) > inputs.max_rows
        rows = [[_json_value(v) for v in r] for r in fetched[: inputs.max_rows]]
        return SqlQueryOutput(columns=columns, rows=rows, row_count=len(rows), truncated=truncated)

    return await _run("sql.query", config, sql=inputs.sql, work=work)
