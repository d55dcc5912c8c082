"""The built-in tools through the ToolBox, on real files, a real SQLite database and a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import socket
import sqlite3
import sys
import threading
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

import cadre.actors.tools.fs as fs_module
from cadre.actors.tools import (
    MARKER_DIR,
    ToolBox,
    ToolCall,
    ToolConfig,
    ToolError,
    builtin_toolbox,
    ensure_sample_database,
    markdown_table,
    typed_impl,
)
from cadre.planner.builtin_tools import TextRenderInput, TextRenderOutput, builtin_catalog
from cadre.planner.catalog import Catalog, Safety, ToolSpec
from cadre.planner.decompose import decompose
from cadre.planner.library import load_entries, match
from cadre.planner.refs import resolve
from cadre.planner.scheduler import topo_order
from cadre.planner.validation import failed, validate_plan, validate_steps, warnings

ROOT = Path(__file__).resolve().parent.parent
PLANS = sorted((ROOT / "examples" / "plans").glob("*.json"))


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_sample_database(tmp_path_factory.mktemp("db") / "shop.db")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def box(workspace: Path, shop_db: Path) -> ToolBox:
    return builtin_toolbox(ToolConfig(workspace=workspace, database=shop_db))


def key(name: str = "step-1") -> ToolCall:
    return ToolCall(idempotency_key=name)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the catalog ---------------------------------------------------------------------------


def test_catalog_lists_the_six_tools_with_json_schemas() -> None:
    catalog = builtin_catalog()
    assert list(catalog) == ["sql.schema", "sql.query", "fs.read", "fs.write", "http.get", "text.render"]
    described = {d["name"]: d for d in catalog.describe()}
    for name, d in described.items():
        assert d["input_schema"]["type"] == "object", name
        assert d["input_schema"]["additionalProperties"] is False, name  # typos are errors
        assert d["output_schema"]["type"] == "object", name
        assert len(d["description"]) > 40, name
        for field, prop in d["input_schema"]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
    assert described["sql.query"]["input_schema"]["required"] == ["sql"]
    assert described["sql.query"]["input_schema"]["properties"]["max_rows"]["maximum"] == 10_000
    assert described["fs.write"]["input_schema"]["properties"]["mode"]["enum"] == ["overwrite", "append"]
    assert {n for n, d in described.items() if d["safety"] == "side_effect"} == {"fs.write"}
    assert all(d["safety"] == "read_only" for n, d in described.items() if n != "fs.write")


# --- sql -----------------------------------------------------------------------------------


async def test_sql_schema_lists_tables_and_columns(box: ToolBox) -> None:
    out = await box.call("sql.schema", {}, key())
    tables = {t["name"]: [(c["name"], c["type"]) for c in t["columns"]] for t in out["tables"]}
    assert list(tables) == ["customers", "order_items", "orders", "products"]
    assert tables["orders"] == [
        ("id", "INTEGER"),
        ("customer_id", "INTEGER"),
        ("ordered_on", "TEXT"),
        ("status", "TEXT"),
        ("total", "REAL"),
    ]


async def test_sql_query_binds_params(box: ToolBox) -> None:
    out = await box.call(
        "sql.query",
        {
            "sql": "SELECT name, country FROM customers WHERE country = ? AND id < ? ORDER BY id",
            "params": ["GB", 100],
        },
        key(),
    )
    assert out == {
        "columns": ["name", "country"],
        "rows": [["Ada Lovelace", "GB"], ["Alan Turing", "GB"]],
        "row_count": 2,
        "truncated": False,
    }


async def test_sample_data_adds_up(box: ToolBox) -> None:
    out = await box.call(
        "sql.query",
        {
            "sql": "SELECT COUNT(*), MIN(ordered_on), MAX(ordered_on), "
            "(SELECT COUNT(*) FROM customers), "
            "(SELECT COUNT(*) FROM orders o WHERE ABS(o.total - "
            "(SELECT SUM(quantity * unit_price) FROM order_items WHERE order_id = o.id)) > 0.001) "
            "FROM orders"
        },
        key(),
    )
    count, first, last, customers, inconsistent = out["rows"][0]
    assert 35 <= count <= 45
    assert (first[:4], last[:4], customers, inconsistent) == ("2023", "2024", 10, 0)


async def test_sql_query_truncates_at_max_rows(box: ToolBox) -> None:
    few = await box.call("sql.query", {"sql": "SELECT id FROM orders ORDER BY id", "max_rows": 5}, key())
    assert (few["rows"], few["row_count"], few["truncated"]) == ([[1], [2], [3], [4], [5]], 5, True)
    everything = await box.call("sql.query", {"sql": "SELECT id FROM orders", "max_rows": 10_000}, key())
    assert everything["truncated"] is False
    assert everything["row_count"] == len(everything["rows"]) > 5


async def test_sql_blobs_come_back_as_hex(box: ToolBox) -> None:
    out = await box.call("sql.query", {"sql": "SELECT x'CAFE' AS b, NULL AS n, 1.5 AS f"}, key())
    assert out["rows"] == [["0xcafe", None, 1.5]]


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("INSERT INTO orders (customer_id, ordered_on, status, total) VALUES (1, '2025-01-01', 'completed', 1)",
         "INSERT"),
        ("UPDATE orders SET total = 0", "UPDATE"),
        ("DELETE FROM orders", "DELETE"),
        ("DROP TABLE orders", "DROP TABLE"),
        ("CREATE TABLE notes (body TEXT)", "CREATE TABLE"),
        ("CREATE TEMP TABLE notes (body TEXT)", "CREATE TEMP TABLE"),
        ("ATTACH DATABASE ':memory:' AS other", "ATTACH"),
        ("PRAGMA writable_schema = ON", "PRAGMA writable_schema"),
        ("PRAGMA query_only = OFF", "PRAGMA query_only"),
        ("WITH old AS (SELECT id FROM orders) DELETE FROM orders WHERE id IN old", "DELETE on 'orders'"),
        ("/* sneaky */ ALTER TABLE orders ADD COLUMN note TEXT", "ALTER TABLE"),
        ("VACUUM", "VACUUM"),
    ],
)  # fmt: skip
async def test_sql_query_refuses_every_write(box: ToolBox, shop_db: Path, sql: str, kind: str) -> None:
    before = digest(shop_db)
    with pytest.raises(ToolError, match=rf"^sql\.query is read-only: {re.escape(kind)} is refused") as err:
        await box.call("sql.query", {"sql": sql}, key())
    assert (err.value.code, err.value.tool, err.value.retryable) == ("write_refused", "sql.query", False)
    assert digest(shop_db) == before


async def test_sql_errors_carry_sqlites_text(box: ToolBox) -> None:
    with pytest.raises(ToolError, match=r"^SQLite refused the statement: no such column: nope$") as err:
        await box.call("sql.query", {"sql": "SELECT nope FROM orders"}, key())
    assert err.value.code == "sql_error"
    with pytest.raises(ToolError, match=r"^SQLite refused the statement: You can only execute one statement"):
        await box.call("sql.query", {"sql": "SELECT 1; DELETE FROM orders"}, key())
    with pytest.raises(ToolError, match=r"^SQLite refused the statement: Incorrect number of bindings"):
        await box.call("sql.query", {"sql": "SELECT ?", "params": []}, key())


async def test_sql_without_a_database(workspace: Path, tmp_path: Path) -> None:
    bare = builtin_toolbox(ToolConfig(workspace=workspace))
    with pytest.raises(ToolError, match=r"^sql\.schema needs a database: set CADRE_DATABASE") as err:
        await bare.call("sql.schema", {}, key())
    assert err.value.code == "not_configured"
    missing = builtin_toolbox(ToolConfig(workspace=workspace, database=tmp_path / "none.db"))
    with pytest.raises(ToolError, match=r"^database '.*none\.db' does not exist$") as err:
        await missing.call("sql.query", {"sql": "SELECT 1"}, key())
    assert err.value.code == "not_found"
    assert not (tmp_path / "none.db").exists()


async def test_a_runaway_query_times_out_and_frees_its_thread(box: ToolBox) -> None:
    # One worker thread: the follow-up call can only run if the timed-out query was interrupted.
    executor = ThreadPoolExecutor(max_workers=1)
    asyncio.get_running_loop().set_default_executor(executor)
    forever = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT COUNT(*) FROM n"
    with pytest.raises(ToolError, match=r"^sql\.query did not finish within 0\.2 s$") as err:
        await box.call("sql.query", {"sql": forever}, key(), timeout=0.2)
    assert (err.value.code, err.value.retryable) == ("timeout", True)
    out = await asyncio.wait_for(box.call("sql.query", {"sql": "SELECT 42"}, key()), 5)
    assert out["rows"] == [[42]]


# --- fs ------------------------------------------------------------------------------------


async def test_fs_write_then_read(box: ToolBox, workspace: Path) -> None:
    out = await box.call("fs.write", {"path": "reports/a.md", "content": "héllo\n"}, key("w1"))
    assert out == {"path": "reports/a.md", "bytes_written": 7, "already_done": False}
    assert (workspace / "reports" / "a.md").read_text() == "héllo\n"
    assert await box.call("fs.read", {"path": "reports/a.md"}, key()) == {
        "path": "reports/a.md",
        "content": "héllo\n",
        "bytes": 7,
        "truncated": False,
    }
    cut = await box.call("fs.read", {"path": "./reports/../reports/a.md", "max_bytes": 2}, key())
    assert (cut["path"], cut["content"], cut["bytes"], cut["truncated"]) == ("reports/a.md", "h\ufffd", 2, True)


async def test_fs_read_of_a_missing_file(box: ToolBox) -> None:
    with pytest.raises(ToolError, match=r"^file 'nope\.txt' does not exist in the workspace$") as err:
        await box.call("fs.read", {"path": "nope.txt"}, key())
    assert err.value.code == "not_found"
    with pytest.raises(ToolError, match=r"^path '\.' is the workspace folder itself") as err:
        await box.call("fs.read", {"path": "."}, key())


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "/tmp/x", "reports/../../../etc/hosts"])
async def test_fs_refuses_paths_outside_the_workspace(box: ToolBox, workspace: Path, path: str) -> None:
    for tool, inputs in (("fs.read", {"path": path}), ("fs.write", {"path": path, "content": "x"})):
        with pytest.raises(ToolError, match=rf"^path {re.escape(repr(path))} is outside the workspace") as err:
            await box.call(tool, inputs, key())
        assert err.value.code == "outside_workspace"
    assert not (workspace.parent / "x").exists()


async def test_fs_refuses_symlinks_that_lead_out(box: ToolBox, workspace: Path, tmp_path: Path) -> None:
    (workspace / "etc").symlink_to("/etc")
    (workspace / "hosts").symlink_to("/etc/hosts")
    outside = tmp_path / "outside"
    outside.mkdir()
    (workspace / "deep").mkdir()
    (workspace / "deep" / "out").symlink_to(outside)
    (workspace / "dangling").symlink_to(outside / "new.txt")  # its target does not exist yet
    for path in ("etc/passwd", "hosts", "deep/out/new.txt", "dangling"):
        with pytest.raises(ToolError, match=rf"^path '{path}' is outside the workspace .* resolves to '") as err:
            await box.call("fs.write", {"path": path, "content": "pwned"}, key())
        assert err.value.code == "outside_workspace"
        with pytest.raises(ToolError, match=rf"^path '{path}' is outside the workspace"):
            await box.call("fs.read", {"path": path}, key())
    assert list(outside.iterdir()) == []


async def test_fs_follows_symlinks_that_stay_inside(box: ToolBox, workspace: Path) -> None:
    (workspace / "real").mkdir()
    (workspace / "alias").symlink_to(workspace / "real")
    out = await box.call("fs.write", {"path": "alias/f.txt", "content": "in"}, key())
    assert out["path"] == "real/f.txt"
    assert (workspace / "real" / "f.txt").read_text() == "in"


async def test_fs_refuses_the_marker_folder(box: ToolBox, workspace: Path) -> None:
    await box.call("fs.write", {"path": "a.txt", "content": "x"}, key("w"))
    marker = next((workspace / MARKER_DIR).glob("*.json")).name
    with pytest.raises(ToolError, match=rf"^path '{MARKER_DIR}/{marker}' is in {MARKER_DIR}/") as err:
        await box.call("fs.read", {"path": f"{MARKER_DIR}/{marker}"}, key())
    assert err.value.code == "reserved_path"
    with pytest.raises(ToolError, match=r"^path 'x/\.\./\.cadre-idempotency/m\.json' is in "):
        await box.call("fs.write", {"path": "x/../.cadre-idempotency/m.json", "content": "{}"}, key())


async def test_fs_refuses_a_hard_link_to_a_file_outside(box: ToolBox, workspace: Path, tmp_path: Path) -> None:
    """A hard link made inside the workspace to a file outside: read, append and overwrite are all refused."""
    outside = tmp_path / "secret.txt"
    outside.write_text("outside secret\n")
    os.link(outside, workspace / "inside.txt")
    (workspace / "sub").mkdir()
    os.link(outside, workspace / "sub" / "deeper.txt")
    for path in ("inside.txt", "sub/deeper.txt", "./sub/../inside.txt"):
        rel = "inside.txt" if path.endswith("inside.txt") else path
        with pytest.raises(ToolError, match=rf"^file '{rel}' has 3 hard links; fs.read refuses a file with more") as e:
            await box.call("fs.read", {"path": path}, key())
        assert (e.value.code, e.value.retryable) == ("hard_linked", False)
        for mode in ("append", "overwrite"):
            with pytest.raises(ToolError, match=rf"^file '{rel}' has 3 hard links; fs.write refuses") as e:
                await box.call("fs.write", {"path": path, "content": "pwned\n", "mode": mode}, key(f"{mode}-{path}"))
            assert e.value.code == "hard_linked"
    assert outside.read_text() == "outside secret\n"
    assert os.stat(outside).st_nlink == 3  # neither link was replaced either
    assert list((workspace / MARKER_DIR).glob("*.json")) == []  # refused before the protocol's first step


async def test_fs_a_file_with_one_name_is_fine_again(box: ToolBox, workspace: Path, tmp_path: Path) -> None:
    (workspace / "log.txt").write_text("a\n")
    os.link(workspace / "log.txt", tmp_path / "other-name")
    with pytest.raises(ToolError, match=r"has 2 hard links"):
        await box.call("fs.write", {"path": "log.txt", "content": "b\n", "mode": "append"}, key("s1"))
    (tmp_path / "other-name").unlink()
    await box.call("fs.write", {"path": "log.txt", "content": "b\n", "mode": "append"}, key("s1"))
    assert (await box.call("fs.read", {"path": "log.txt"}, key()))["content"] == "a\nb\n"


async def test_fs_refuses_what_is_not_a_regular_file(box: ToolBox, workspace: Path) -> None:
    os.mkfifo(workspace / "pipe")  # opening it for reading would wait for a writer forever
    for tool, inputs in (
        ("fs.read", {"path": "pipe"}),
        ("fs.write", {"path": "pipe", "content": "x", "mode": "append"}),
    ):
        try:
            with pytest.raises(
                ToolError, match=r"^path 'pipe' is \(or runs through\) something that is not a file$"
            ) as e:
                await asyncio.wait_for(box.call(tool, inputs, key()), 5)
            assert e.value.code == "not_a_file"
        finally:
            with contextlib.suppress(OSError):  # a reader blocked in open() (the bug) gets its writer and ends
                os.close(os.open(workspace / "pipe", os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("tool", ["fs.read", "fs.write"])
async def test_fs_a_symlink_swapped_in_after_the_check_is_not_followed(
    box: ToolBox, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    """The race: the path is checked while ``sub`` is a folder, then ``sub`` becomes a symlink out."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("outside\n")
    (workspace / "sub").mkdir()
    (workspace / "sub" / "f.txt").write_text("inside\n")
    checked = fs_module.resolve_in_workspace

    def check_then_swap(tool_name: str, ws: Path, path: str) -> tuple[Path, str]:
        result = checked(tool_name, ws, path)
        (workspace / "sub" / "f.txt").unlink()
        (workspace / "sub").rmdir()
        (workspace / "sub").symlink_to(outside)
        return result

    monkeypatch.setattr(fs_module, "resolve_in_workspace", check_then_swap)
    inputs = {"path": "sub/f.txt"} if tool == "fs.read" else {"path": "sub/f.txt", "content": "x", "mode": "append"}
    with pytest.raises(ToolError, match=r"^path 'sub/f\.txt' became a symbolic link while it was being opened") as e:
        await box.call(tool, inputs, key())
    assert e.value.code == "outside_workspace"
    assert (outside / "f.txt").read_text() == "outside\n"


@pytest.mark.parametrize("tool", ["fs.read", "fs.write"])
async def test_fs_a_file_swapped_for_a_symlink_after_the_check_is_not_followed(
    box: ToolBox, workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("outside\n")
    (workspace / "f.txt").write_text("inside\n")
    checked = fs_module.resolve_in_workspace

    def check_then_swap(tool_name: str, ws: Path, path: str) -> tuple[Path, str]:
        result = checked(tool_name, ws, path)
        (workspace / "f.txt").unlink()
        (workspace / "f.txt").symlink_to(outside)
        return result

    monkeypatch.setattr(fs_module, "resolve_in_workspace", check_then_swap)
    inputs = {"path": "f.txt"} if tool == "fs.read" else {"path": "f.txt", "content": "x", "mode": "append"}
    with pytest.raises(ToolError, match=r"^path 'f\.txt' became a symbolic link while it was being opened") as e:
        await box.call(tool, inputs, key())
    assert e.value.code == "outside_workspace"
    assert outside.read_text() == "outside\n"


# --- fs.write: exactly once ----------------------------------------------------------------


def marker_path(workspace: Path, step: str) -> Path:
    return workspace / MARKER_DIR / (hashlib.sha256(step.encode()).hexdigest() + ".json")


def pending_marker(workspace: Path, step: str, path: str, content: str, mode: str, size_before: int | None) -> None:
    """The marker a crash right after step 2's "pending" record leaves behind (see actors/tools/fs.py)."""
    data = content.encode()
    intent = {"path": path, "mode": mode, "sha256": hashlib.sha256(data).hexdigest(), "length": len(data)}
    marker = marker_path(workspace, step)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps({"v": 1, "key": step, "state": "pending", "intent": intent, "size_before": size_before})
    )


async def test_append_twice_with_one_key_writes_once(box: ToolBox, workspace: Path) -> None:
    log = {"path": "log.txt", "content": "one\n", "mode": "append"}
    first = await box.call("fs.write", log, key("s1"))
    again = await box.call("fs.write", log, key("s1"))
    other = await box.call("fs.write", log, key("s2"))
    assert (first["already_done"], again["already_done"], other["already_done"]) == (False, True, False)
    assert again["bytes_written"] == 4
    assert (workspace / "log.txt").read_text() == "one\none\n"
    assert json.loads(marker_path(workspace, "s1").read_text())["state"] == "done"


async def test_overwrite_twice_with_one_key_reports_already_done(box: ToolBox, workspace: Path) -> None:
    assert (await box.call("fs.write", {"path": "r.md", "content": "v1"}, key("s")))["already_done"] is False
    (workspace / "r.md").write_text("changed by someone else")
    assert (await box.call("fs.write", {"path": "r.md", "content": "v1"}, key("s")))["already_done"] is True
    assert (workspace / "r.md").read_text() == "changed by someone else"  # a done step never writes again


async def test_one_key_cannot_name_two_writes(box: ToolBox) -> None:
    await box.call("fs.write", {"path": "r.md", "content": "v1"}, key("s"))
    with pytest.raises(ToolError, match=r"^idempotency key 's' already wrote .*; a step id must name one write$") as e:
        await box.call("fs.write", {"path": "r.md", "content": "v2"}, key("s"))
    assert e.value.code == "idempotency_conflict"


async def test_crash_after_the_append_landed(box: ToolBox, workspace: Path) -> None:
    (workspace / "log.txt").write_text("old\nnew\n")  # the append happened, its "done" marker did not
    pending_marker(workspace, "s", "log.txt", "new\n", "append", size_before=4)
    out = await box.call("fs.write", {"path": "log.txt", "content": "new\n", "mode": "append"}, key("s"))
    assert out == {"path": "log.txt", "bytes_written": 4, "already_done": True}
    assert (workspace / "log.txt").read_text() == "old\nnew\n"
    assert json.loads(marker_path(workspace, "s").read_text())["state"] == "done"


async def test_crash_before_the_append(box: ToolBox, workspace: Path) -> None:
    (workspace / "log.txt").write_text("old\n")
    pending_marker(workspace, "s", "log.txt", "new\n", "append", size_before=4)
    out = await box.call("fs.write", {"path": "log.txt", "content": "new\n", "mode": "append"}, key("s"))
    assert out["already_done"] is False
    assert (workspace / "log.txt").read_text() == "old\nnew\n"


async def test_crash_in_the_middle_of_the_append(box: ToolBox, workspace: Path) -> None:
    (workspace / "log.txt").write_text("old\nne")  # a torn write
    pending_marker(workspace, "s", "log.txt", "new\n", "append", size_before=4)
    await box.call("fs.write", {"path": "log.txt", "content": "new\n", "mode": "append"}, key("s"))
    assert (workspace / "log.txt").read_text() == "old\nnew\n"


async def test_crash_before_an_append_to_a_new_file(box: ToolBox, workspace: Path) -> None:
    pending_marker(workspace, "s", "logs/new.txt", "first\n", "append", size_before=0)
    await box.call("fs.write", {"path": "logs/new.txt", "content": "first\n", "mode": "append"}, key("s"))
    await box.call("fs.write", {"path": "logs/new.txt", "content": "first\n", "mode": "append"}, key("s"))
    assert (workspace / "logs" / "new.txt").read_text() == "first\n"


async def test_a_pending_overwrite_is_redone(box: ToolBox, workspace: Path) -> None:
    (workspace / "r.md").write_text("stale")
    pending_marker(workspace, "s", "r.md", "fresh", "overwrite", size_before=None)
    out = await box.call("fs.write", {"path": "r.md", "content": "fresh"}, key("s"))
    assert (out["already_done"], (workspace / "r.md").read_text()) == (False, "fresh")
    assert (await box.call("fs.write", {"path": "r.md", "content": "fresh"}, key("s")))["already_done"] is True


async def test_a_file_that_shrank_under_a_pending_append_is_not_guessed_at(box: ToolBox, workspace: Path) -> None:
    (workspace / "log.txt").write_text("o")
    pending_marker(workspace, "s", "log.txt", "new\n", "append", size_before=4)
    with pytest.raises(ToolError, match=r"^file 'log\.txt' shrank to 1 bytes below the 4") as err:
        await box.call("fs.write", {"path": "log.txt", "content": "new\n", "mode": "append"}, key("s"))
    assert err.value.code == "file_changed"


CRASHING_WRITER = """
import asyncio, sys
from pathlib import Path
from cadre.actors.tools import ToolCall, ToolConfig, builtin_toolbox

async def main() -> None:
    box = builtin_toolbox(ToolConfig(workspace=Path(sys.argv[1])))
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        await box.call("fs.write", {"path": "log.txt", "content": f"line {i}\\n", "mode": "append"},
                       ToolCall(idempotency_key=f"step-{i}"))

asyncio.run(main())
"""


async def test_kill_9_at_any_moment_still_appends_each_line_once(box: ToolBox, workspace: Path) -> None:
    """A writer process is killed at a random moment, then every step is retried: each line lands once.

    The kill lands before, inside or after any of the protocol's steps (a probe of 20 rounds
    found pending markers, half-written marker tmp files and finished runs).
    """
    lines = 40
    rng = random.Random(1234)
    for _ in range(6):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CRASHING_WRITER, str(workspace), str(lines), stdout=PIPE, cwd=ROOT
        )
        assert proc.stdout is not None
        assert await proc.stdout.readline() == b"ready\n"
        await asyncio.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        for i in range(lines):  # the redelivered steps, in order
            await box.call(
                "fs.write", {"path": "log.txt", "content": f"line {i}\n", "mode": "append"}, key(f"step-{i}")
            )
        assert (workspace / "log.txt").read_text() == "".join(f"line {i}\n" for i in range(lines))
        (workspace / "log.txt").unlink()
        for marker in (workspace / MARKER_DIR).glob("*.json"):
            marker.unlink()


# --- http.get ------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []  # the request paths that reached the server, in order

    def do_GET(self) -> None:
        self.seen.append(self.path)
        routes: dict[str, tuple[int, dict[str, str], bytes]] = {
            "/public/hello": (200, {"Content-Type": "text/plain"}, b"hello"),
            "/public/missing": (404, {}, b"no such page"),
            "/public/big": (200, {}, b"x" * 5000),
            "/public/echo": (200, {}, (self.headers.get("X-Test") or "").encode()),
            "/public/in": (302, {"Location": "/public/hello"}, b""),
            "/public/out": (302, {"Location": "/secret"}, b""),
            "/secret": (200, {}, b"secret"),
            "/public/latin1": (200, {}, b"caf\xe9"),
            "/public/sneaky": (302, {"Location": "/public/%2e%2e/secret"}, b""),
        }
        status, headers, body = routes.get(self.path, (500, {}, b"unexpected " + self.path.encode()))
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def web(workspace: Path, http_base: str) -> ToolBox:
    return builtin_toolbox(ToolConfig(workspace=workspace, http_allow=(f"{http_base}/public/",)))


async def test_http_get_returns_status_headers_and_body(web: ToolBox, http_base: str) -> None:
    out = await web.call("http.get", {"url": f"{http_base}/public/hello"}, key())
    assert (out["status"], out["body"], out["truncated"]) == (200, "hello", False)
    assert out["headers"]["content-type"] == "text/plain"
    assert out["headers"]["set-cookie"] == "a=1, b=2"
    echo = await web.call("http.get", {"url": f"{http_base}/public/echo", "headers": {"X-Test": "yes"}}, key())
    assert echo["body"] == "yes"


async def test_http_non_2xx_is_an_answer(web: ToolBox, http_base: str) -> None:
    out = await web.call("http.get", {"url": f"{http_base}/public/missing"}, key())
    assert (out["status"], out["body"]) == (404, "no such page")


async def test_http_truncates_and_decodes_leniently(web: ToolBox, http_base: str) -> None:
    big = await web.call("http.get", {"url": f"{http_base}/public/big", "max_bytes": 10}, key())
    assert (big["body"], big["truncated"]) == ("x" * 10, True)
    latin = await web.call("http.get", {"url": f"{http_base}/public/latin1"}, key())
    assert latin["body"] == "caf\ufffd"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/secret", "is not under an allowed prefix"),
        ("/public/../secret", "is not under an allowed prefix"),
        ("/publicity", "is not under an allowed prefix"),
    ],
)
async def test_http_allow_list(web: ToolBox, http_base: str, path: str, why: str) -> None:
    url = http_base + path
    with pytest.raises(ToolError, match=rf"^URL {re.escape(repr(url))} {why}; allowed: '") as err:
        await web.call("http.get", {"url": url}, key())
    assert (err.value.code, err.value.retryable) == ("not_allowed", False)
    assert "CADRE_HTTP_ALLOW" in err.value.message


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/public/%2e%2e/secret", "its path has a disguised dot segment ('%2e%2e')"),
        ("/public/%2E%2E/secret", "its path has a disguised dot segment ('%2E%2E')"),
        ("/public/.%2e/secret", "its path has a disguised dot segment ('.%2e')"),
        ("/public/%2e./secret", "its path has a disguised dot segment ('%2e.')"),
        ("/public/%2e/hello", "its path has a disguised dot segment ('%2e')"),
        ("/public/..;/secret", "its path has a disguised dot segment ('..;')"),
        ("/public/%252e%252e/secret", "its path has a disguised dot segment ('%2e%2e')"),
        ("/public/..%2fsecret", "its path has a percent-encoded '/' or '\\' (%2f, %5c)"),
        ("/public/..%2Fsecret", "its path has a percent-encoded '/'"),
        ("/public/..%5csecret", "its path has a percent-encoded '/'"),
        ("/public/%5C..%5Csecret", "its path has a percent-encoded '/'"),
        ("/public/hello%2f..%2f..%2fsecret", "its path has a percent-encoded '/'"),
        ("/public/..%252fsecret", "its path has a percent-encoded '/'"),
        ("/public/%25252e%25252e/secret", "its path has a disguised dot segment"),
    ],
)
async def test_http_refuses_encoded_separators_and_dot_segments(
    web: ToolBox, http_base: str, path: str, why: str
) -> None:
    _Handler.seen.clear()
    url = http_base + path
    with pytest.raises(ToolError, match=rf"^URL {re.escape(repr(url))} is refused: {re.escape(why)}") as err:
        await web.call("http.get", {"url": url}, key())
    assert (err.value.code, err.value.retryable) == ("not_allowed", False)
    assert _Handler.seen == []  # refused before any request was sent


async def test_http_refuses_a_redirect_to_an_encoded_dot_segment(web: ToolBox, http_base: str) -> None:
    _Handler.seen.clear()
    with pytest.raises(ToolError, match=r"/public/%2e%2e/secret' is refused: its path has a disguised dot segment"):
        await web.call("http.get", {"url": f"{http_base}/public/sneaky"}, key())
    assert _Handler.seen == ["/public/sneaky"]


async def test_http_plain_encoded_characters_still_pass(web: ToolBox, http_base: str) -> None:
    _Handler.seen.clear()
    out = await web.call("http.get", {"url": f"{http_base}/public/a%20b%2e.txt?next=%2Fsecret%2F..%2F"}, key())
    assert out["status"] == 500  # the test server has no such route: what matters is it was asked
    assert _Handler.seen == ["/public/a%20b%2e.txt?next=%2Fsecret%2F..%2F"]


@pytest.mark.parametrize("name", ["Host", "host", "HOST", "hOsT", " Host "])
async def test_http_refuses_a_caller_set_host_header(web: ToolBox, http_base: str, name: str) -> None:
    _Handler.seen.clear()
    with pytest.raises(ToolError, match=rf"^header {re.escape(repr(name))} is refused: the Host header is taken") as e:
        await web.call("http.get", {"url": f"{http_base}/public/hello", "headers": {name: "internal.example"}}, key())
    assert (e.value.code, e.value.retryable) == ("not_allowed", False)
    assert _Handler.seen == []


async def test_http_normalises_before_matching(web: ToolBox, http_base: str) -> None:
    upper = http_base.replace("http://", "HTTP://") + "/public/x/../hello#frag"
    assert (await web.call("http.get", {"url": upper}, key()))["body"] == "hello"


@pytest.mark.parametrize(
    "template",
    ["http://{host}@evil.example/public/hello", "http://user:pw@{host}/public/hello", "http://{host}\\@evil.example/"],
)
async def test_http_refuses_userinfo_tricks(web: ToolBox, http_base: str, template: str) -> None:
    url = template.format(host=http_base.removeprefix("http://"))
    with pytest.raises(ToolError, match=rf"^URL {re.escape(repr(url))} is refused: ") as err:
        await web.call("http.get", {"url": url}, key())
    assert err.value.code == "not_allowed"


async def test_http_refuses_other_schemes(web: ToolBox) -> None:
    with pytest.raises(ToolError, match=r"^URL 'file:///etc/passwd' is refused: scheme 'file' is not http or https$"):
        await web.call("http.get", {"url": "file:///etc/passwd"}, key())


async def test_http_redirects_stay_inside_the_allow_list(web: ToolBox, http_base: str) -> None:
    assert (await web.call("http.get", {"url": f"{http_base}/public/in"}, key()))["body"] == "hello"
    with pytest.raises(ToolError, match=rf"^URL '{re.escape(http_base)}/secret' is not under an allowed prefix"):
        await web.call("http.get", {"url": f"{http_base}/public/out"}, key())


async def test_http_with_an_empty_allow_list(box: ToolBox, http_base: str) -> None:
    with pytest.raises(ToolError, match=r"^URL '.*' is not under an allowed prefix; allowed: \(empty\); add its"):
        await box.call("http.get", {"url": f"{http_base}/public/hello"}, key())


async def test_http_connection_errors_are_retryable(workspace: Path) -> None:
    with closed_port() as port:
        web = builtin_toolbox(ToolConfig(workspace=workspace, http_allow=(f"http://127.0.0.1:{port}/",)))
        with pytest.raises(ToolError, match=rf"^GET http://127\.0\.0\.1:{port}/ failed: ") as err:
            await web.call("http.get", {"url": f"http://127.0.0.1:{port}/"}, key())
    assert (err.value.code, err.value.retryable) == ("http_error", True)


@contextmanager
def closed_port() -> Iterator[int]:
    """A port nobody listens on (bound without listen, so connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# --- text.render ---------------------------------------------------------------------------


async def test_text_render_tables_and_json(box: ToolBox) -> None:
    top = {"columns": ["customer", "spent_eur"], "rows": [["Ada | Co", 12.5], ["Bob", None]]}
    out = await box.call(
        "text.render",
        {
            "template": "# {title}\n\n{top!t}\n\nfirst: {top.rows[0][0]} / {top[columns][1]}; raw {top.rows!j}",
            "values": {"title": "Top", "top": top},
        },
        key(),
    )
    assert out["text"] == (
        "# Top\n\n"
        "| customer | spent_eur |\n"
        "| --- | ---: |\n"
        "| Ada \\| Co | 12.5 |\n"
        "| Bob |  |\n\n"
        'first: Ada | Co / spent_eur; raw [["Ada | Co",12.5],["Bob",null]]'
    )


def test_markdown_table_of_a_list_of_objects() -> None:
    tables = [{"name": "t", "columns": [{"name": "id", "type": "INTEGER"}, {"name": "x", "type": ""}]}]
    assert markdown_table(tables) == "| name | columns |\n| --- | --- |\n| t | id INTEGER, x  |"
    assert markdown_table({"columns": [], "rows": []}) == ""


async def test_text_render_formats_like_str_format(box: ToolBox) -> None:
    out = await box.call(
        "text.render",
        {"template": "{n:>5}|{f:.2f}|{obj}|{{literal}}|{s!r}", "values": {"n": 7, "f": 2, "obj": {"a": [1]}, "s": "q"}},
        key(),
    )
    assert out["text"] == "    7|2.00|{\"a\":[1]}|{literal}|'q'"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{nope}", r"missing key 'nope' in \{nope\}; the values are: s, top"),
        ("{top.nope}", r"missing key 'nope' in \{top\.nope\}; 'top' has: rows"),
        ("{s.__class__}", r"\{s\.__class__\} names a '__' attribute; placeholders look up keys only"),
        ("{top.__class__.__name__}", r"\{top\.__class__\.__name__\} names a '__' attribute"),
        ("{top.rows.count}", r"\{top\.rows\.count\}: '\.count' looks up a key, but 'top\.rows' is a list; attribute"),
        ("{top.rows[5]}", r"\{top\.rows\[5\]\}: index 5 is out of range \('top\.rows' has 1 items\)"),
        ("{top.rows[x]}", r"\{top\.rows\[x\]\}: 'top\.rows' is a list; index it with a number"),
        ("{}", r"positional placeholder \{0\}: name a value instead"),
        ("{0}", r"positional placeholder \{0\}: name a value instead"),
        ("{s!x}", r"unknown conversion !x; use !t \(table\), !j \(JSON\), !s, !r or !a"),
        ("{s!t}", r"!t renders an sql\.query output \(\{columns, rows\}\) or a list of objects, not a str"),
        ("{s:>100000}", r"format spec '>100000' is wider than 1000"),
        ("{top:d}", r"format spec 'd' does not apply to an object"),
        ("{s", r"expected '\}' before end of string"),
        ("}", r"Single '\}' encountered in format string"),
    ],
)
async def test_text_render_refuses_bad_templates(box: ToolBox, template: str, message: str) -> None:
    values = {"s": "text", "top": {"rows": [[1]]}}
    with pytest.raises(ToolError, match=rf"^invalid template: {message}") as err:
        await box.call("text.render", {"template": template, "values": values}, key())
    assert (err.value.code, err.value.tool) == ("invalid_template", "text.render")


# --- the ToolBox ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "inputs", "message"),
    [
        ("sql.query", {}, r"sql: Field required$"),
        ("sql.query", {"sql": "SELECT 1", "qeury": 1}, r"qeury: Extra inputs are not permitted$"),
        ("sql.query", {"sql": "SELECT 1", "max_rows": 0}, r"max_rows: Input should be greater than or equal to 1$"),
        ("sql.query", {"sql": "SELECT 1", "params": [[1]]}, r"params\[0\]\.str: Input should be a valid string; "),
        ("sql.schema", {"table": "x"}, r"table: Extra inputs are not permitted$"),
        (
            "fs.write",
            {"path": "a", "content": "b", "mode": "insert"},
            r"mode: Input should be 'overwrite' or 'append'$",
        ),
        ("http.get", {"url": "http://x/", "headers": {"a": 1}}, r"headers\.a: Input should be a valid string$"),
    ],
)
async def test_invalid_input_names_the_field(box: ToolBox, tool: str, inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(ToolError, match=rf"^invalid input for {re.escape(tool)}: {message}") as err:
        await box.call(tool, inputs, key())
    assert (err.value.code, err.value.tool) == ("invalid_input", tool)


async def test_unknown_and_prohibited_tools(box: ToolBox, workspace: Path, shop_db: Path) -> None:
    with pytest.raises(ToolError, match=r"^no tool named 'sql\.exec'; the catalog has: fs\.read, fs\.write, ") as err:
        await box.call("sql.exec", {"sql": "DROP TABLE orders"}, key())
    assert err.value.code == "unknown_tool"
    strict = builtin_toolbox(
        ToolConfig(workspace=workspace, database=shop_db), builtin_catalog().with_policy(prohibited=["fs.write"])
    )
    with pytest.raises(ToolError, match=r"^tool 'fs\.write' is prohibited by this deployment's policy$") as err:
        await strict.call("fs.write", {"path": "a", "content": "b"}, key())
    assert err.value.code == "prohibited"
    assert not (workspace / "a").exists()
    assert err.value.to_wire() == {"code": "prohibited", "message": err.value.message}


class Slow(BaseModel):
    seconds: float


def custom_box(workspace: Path, impl: Any, timeout_s: float = 10.0) -> ToolBox:
    spec = ToolSpec("test.slow", "sleeps", Slow, TextRenderOutput, Safety.READ_ONLY, timeout_s=timeout_s)
    return ToolBox(Catalog([spec]), {"test.slow": typed_impl("test.slow", Slow, impl)}, ToolConfig(workspace))


async def test_a_slow_tool_times_out_retryably(workspace: Path) -> None:
    async def slow(inputs: Slow, config: ToolConfig, call: ToolCall) -> BaseModel:
        assert call.timeout_s == 0.05  # the limit is passed on to the implementation
        await asyncio.sleep(inputs.seconds)
        return TextRenderOutput(text="late")

    box = custom_box(workspace, slow, timeout_s=0.05)
    with pytest.raises(ToolError, match=r"^test\.slow did not finish within 0\.05 s$") as err:
        await box.call("test.slow", {"seconds": 5}, key())
    assert (err.value.code, err.value.retryable) == ("timeout", True)
    fast = custom_box(workspace, slow, timeout_s=5)
    with pytest.raises(ToolError, match=r"^test\.slow did not finish within 0\.05 s$"):
        await fast.call("test.slow", {"seconds": 5}, key(), timeout=0.05)


async def test_an_output_its_schema_refuses(workspace: Path) -> None:
    async def wrong(inputs: Slow, config: ToolConfig, call: ToolCall) -> BaseModel:
        return Slow(seconds=1)

    async def broken(inputs: Slow, config: ToolConfig, call: ToolCall) -> BaseModel:
        return TextRenderOutput.model_construct(text=None)

    with pytest.raises(ToolError, match=r"^test\.slow returned output its schema refuses: text: Field required; ") as e:
        await custom_box(workspace, wrong).call("test.slow", {"seconds": 0}, key())
    assert e.value.code == "invalid_output"
    with pytest.raises(ToolError, match=r"^test\.slow returned output its schema refuses: text: Input should be a"):
        await custom_box(workspace, broken).call("test.slow", {"seconds": 0}, key())


def test_implementations_must_be_in_the_catalog(workspace: Path) -> None:
    async def impl(inputs: TextRenderInput, config: ToolConfig, call: ToolCall) -> BaseModel:
        return TextRenderOutput(text="")

    with pytest.raises(ValueError, match=r"^implementations for tools not in the catalog: text\.shout$"):
        ToolBox(
            builtin_catalog(), {"text.shout": typed_impl("text.shout", TextRenderInput, impl)}, ToolConfig(workspace)
        )


def test_ensure_sample_database_builds_once(tmp_path: Path) -> None:
    path = ensure_sample_database(tmp_path / "data" / "shop.db")
    stamp = path.stat().st_mtime_ns
    assert ensure_sample_database(path) == path
    assert path.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == ["shop.db"]
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM customers").fetchone() == (10,)
    conn.close()


# --- the example plans ---------------------------------------------------------------------
#
# Each plan is run as the system runs it: checked by the plan validator, each task in
# dependency order decomposed into its step, the step's references resolved against the
# upstream outputs, checked by the step validator, and run through the ToolBox.

# Reports: plan name -> (the file it writes, and text the report must contain, in order).
REPORTS = {
    "top-customers-report": (
        "reports/top_customers_2024.md",
        ["| customer |", "Radia Perlman", "Niklaus Wirth", "Grace"],
    ),
    "monthly-revenue": ("reports/monthly_revenue_2024.md", ["## Revenue", "| 2024-01 |", "| 2024-12 |", "## Orders"]),
    "database-overview": (None, ["| customers | id INTEGER, name TEXT,", "| orders | 42 |"]),
    "product-sales": ("reports/product_sales_2024.md", ["Best seller: ", " EUR).", "## By category", "| kitchen |"]),
}
# Questions: plan name -> the rows its own request must give, by SQL written independently of the entry's.
COMPLETED_2024 = "o.status = 'completed' AND o.ordered_on BETWEEN '2024-01-01' AND '2024-12-31'"
ANSWERS = {
    "count-orders": "SELECT COUNT(*) FROM orders WHERE ordered_on LIKE '2024-%'",
    "count-rows": "SELECT COUNT(*) FROM customers",
    "customer-spending": "SELECT c.name, (SELECT COUNT(*) FROM orders o WHERE o.customer_id = c.id AND "
    + COMPLETED_2024
    + "), ROUND(IFNULL((SELECT SUM(total) FROM orders o WHERE o.customer_id = c.id AND "
    + COMPLETED_2024
    + "), 0), 2) AS s FROM customers c ORDER BY s DESC, c.name",
    "customers-by-country": "SELECT country, COUNT(*) AS n FROM customers GROUP BY country ORDER BY n DESC, country",
    "customers-without-orders": "SELECT name, email, joined_on FROM customers "
    "WHERE id NOT IN (SELECT customer_id FROM orders) ORDER BY name",
    "list-customers": "SELECT name, email, country, joined_on FROM customers ORDER BY joined_on, name",
    "list-orders": "SELECT o.id, o.ordered_on, c.name, o.status, o.total FROM orders o, customers c "
    "WHERE c.id = o.customer_id AND o.status = 'cancelled' ORDER BY o.ordered_on, o.id",
    "list-products": "SELECT name, category, price FROM products ORDER BY category, name",
    "orders-by-status": "SELECT status, COUNT(*) AS n, ROUND(SUM(total), 2) FROM orders GROUP BY status "
    "ORDER BY n DESC, status",
    "revenue-by-month": "SELECT substr(ordered_on, 1, 7) AS m, COUNT(*), "
    "SUM(CASE status WHEN 'completed' THEN 1 ELSE 0 END), "
    "ROUND(TOTAL(CASE status WHEN 'completed' THEN total END), 2) FROM orders "
    "WHERE ordered_on LIKE '2024%' GROUP BY m ORDER BY m",
    "sales-by-product": "SELECT p.name, p.category, SUM(i.quantity), ROUND(SUM(i.quantity * i.unit_price), 2) AS r "
    "FROM products p JOIN order_items i ON i.product_id = p.id JOIN orders o ON o.id = i.order_id WHERE "
    + COMPLETED_2024
    + " GROUP BY p.name ORDER BY r DESC, p.name",
    "top-customers": "SELECT c.name, COUNT(*), ROUND(SUM(o.total), 2) AS s FROM customers c JOIN orders o "
    "ON o.customer_id = c.id WHERE " + COMPLETED_2024 + " GROUP BY c.name ORDER BY s DESC LIMIT 3",
    "top-products": "SELECT p.name, p.category, SUM(i.quantity) AS u, ROUND(SUM(i.quantity * i.unit_price), 2) "
    "FROM products p JOIN order_items i ON i.product_id = p.id JOIN orders o ON o.id = i.order_id WHERE "
    + COMPLETED_2024
    + " GROUP BY p.name ORDER BY u DESC, p.name LIMIT 3",
    "total-revenue": "SELECT COUNT(*), ROUND(SUM(total), 2), ROUND(AVG(total), 2) FROM orders o WHERE "
    + COMPLETED_2024,
}

# Example plans validate without warnings (a warning here means an example teaches a bad habit).
EXPECTED_WARNINGS: dict[str, set[tuple[str, str]]] = {}


def load_plans() -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in PLANS]


def test_every_example_plan_is_checked_here() -> None:
    assert [e.name for e in load_entries(ROOT / "examples" / "plans")] == [doc["name"] for doc in load_plans()]
    assert {doc["name"] for doc in load_plans()} == set(REPORTS) | set(ANSWERS)


def test_plan_files_are_formatted() -> None:
    for path in PLANS:
        doc = json.loads(path.read_text())
        assert path.read_text() == json.dumps(doc, indent=2, ensure_ascii=False) + "\n", path.name


def test_each_entry_serves_its_own_request_and_examples() -> None:
    entries = load_entries(ROOT / "examples" / "plans")
    for e in entries:
        for text in e.phrasings:
            outcome = match(text, entries)
            assert outcome.served is not None, (text, outcome.why_not())
            assert outcome.served.entry.name == e.name, (text, outcome.served.entry.name)


@pytest.mark.parametrize("doc", load_plans(), ids=[p.stem for p in PLANS])
async def test_example_plan_runs_on_the_sample_database(
    box: ToolBox, workspace: Path, shop_db: Path, doc: dict[str, Any]
) -> None:
    outcome = match(doc["request"], load_entries(ROOT / "examples" / "plans"))
    assert outcome.served is not None, outcome.why_not()
    assert outcome.served.entry.name == doc["name"]
    plan = outcome.plan
    assert plan is not None
    catalog = builtin_catalog()
    assert [(c.name, c.message) for c in failed(validate_plan(plan, catalog))] == []
    by_id = {t.id: t for t in plan.nodes}

    outputs: dict[str, dict[str, Any]] = {}
    step_warnings: set[tuple[str, str]] = set()
    for task_id in topo_order(plan):
        task = by_id[task_id]
        (step,) = decompose(task, catalog)
        checks = validate_steps(task, [step], catalog, outputs)
        assert [(c.name, c.message) for c in failed(checks)] == []
        step_warnings |= {(task_id, c.name) for c in warnings(checks)}
        call = ToolCall(idempotency_key=f"{doc['name']}/{step.id}")
        outputs[task_id] = await box.call(step.tool, resolve(step.inputs, outputs), call)
    assert step_warnings == EXPECTED_WARNINGS.get(doc["name"], set())

    assert plan.output is not None
    result = outputs[plan.output]
    if doc["name"] in ANSWERS:
        with contextlib.closing(sqlite3.connect(shop_db)) as db:
            expected = [list(r) for r in db.execute(ANSWERS[doc["name"]])]
        assert result["rows"] == expected
        assert expected  # an empty answer would check nothing
        return
    written, fragments = REPORTS[doc["name"]]
    text = (workspace / written).read_text() if written else result["text"]
    if written:
        assert result == {"path": written, "bytes_written": len(text.encode()), "already_done": False}
    pos = 0
    for fragment in fragments:
        found = text.find(fragment, pos)
        assert found >= 0, f"{fragment!r} missing after position {pos} in:\n{text}"
        pos = found + len(fragment)
