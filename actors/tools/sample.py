"""The sample shop database of the examples, built from SQL shipped inside this package.

``sample_shop.sql`` (customers, products, orders, order_items; 2023-2024) is package data,
so the examples work from an installed cadre, not only from a checkout.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from importlib.resources import files
from pathlib import Path


def sample_sql() -> str:
    """The SQL script that creates and fills the sample shop."""
    return files("cadre.actors.tools").joinpath("sample_shop.sql").read_text(encoding="utf-8")


def ensure_sample_database(path: Path) -> Path:
    """Build the sample shop SQLite file at ``path`` unless it exists; return ``path``.

    The file is built under a temporary name and renamed into place, so a reader never
    sees a half-built database and a crash leaves no file that would be taken as built.
    """
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.building")
    tmp.unlink(missing_ok=True)
    try:
        with closing(sqlite3.connect(tmp)) as conn:
            conn.executescript(sample_sql())
            conn.commit()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
