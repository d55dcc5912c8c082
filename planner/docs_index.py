"""The documentation layer: passages of Markdown and the tool catalog, indexed with SQLite FTS5.

Documents come from two places: a tool may ship documentation (``ToolSpec.docs``, Markdown:
what it does, its inputs, examples, pitfalls; its source is ``tool:<name>``), and a
deployment may add a folder of its own (``CADRE_DOCS_DIR``: every ``*.md`` under it, the
source is the path relative to the folder). Each document is split on its Markdown headings
into passages; a passage's ``ref`` is ``<source>#<heading>``.

Ranking is SQLite's FTS5 (in the standard library's ``sqlite3``): BM25 over a heading and a
body column with the Porter stemmer, not a ranking of our own. User text is never put into
``MATCH`` as it is (``docker-compose``, ``what's``, ``AND`` are FTS5 syntax): its words are
quoted and OR-ed (:func:`fts_query`). The catalog is a second FTS5 table (a tool's name,
description, input and output field names, and its documentation), so a catalog too large to
list in a prompt is cut to the tools a request needs by the same engine.

The index lives in memory, built once per process from the catalog and the folder; it is
pure over them (the same documents give the same answers), and what it answered is recorded
(:class:`~bus.effects.Grounded`), so a replay never reads it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cadre.bus.effects import Passage
from cadre.planner.catalog import Catalog, Safety

__all__ = ["DocsIndex", "fts_query", "load_folder", "split_markdown"]

_STOP_TEXT: Final = """
a an the of in on at to for from by with and or as is are was were be been it its this that these those
i me my we our you your please what which who how do does did can could would should will into about then
there their them they not no if so than
"""
_STOP: Final = frozenset(_STOP_TEXT.split())
_HEADING: Final = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_WORD: Final = re.compile(r"\w+")


def fts_query(text: str) -> str:
    """Free text as a safe FTS5 query: its words (stop words dropped) quoted and OR-ed; "" when
    no word is left (the caller then searches nothing)."""
    terms = dict.fromkeys(w for w in _WORD.findall(text.lower()) if w not in _STOP and len(w) > 1)
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


def split_markdown(text: str, source: str) -> list[Passage]:
    """``text`` cut into passages at its headings (the text before the first one is the
    document's introduction, headed by its first heading or by ``source``). Code fences are
    kept whole: a ``#`` inside one is not a heading. Empty sections are dropped."""
    passages: list[Passage] = []
    heading, fence = "", False
    body: list[str] = []
    trail: list[str] = []  # the open headings, by level: "Deploying > Retries"

    def close() -> None:
        content = "\n".join(body).strip()
        if content:
            title = heading or source
            passages.append(Passage(ref=f"{source}#{title}", source=source, heading=title, text=content))

    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
        m = None if fence else _HEADING.match(line)
        if m is None:
            body.append(line)
            continue
        close()
        level, title = len(m.group(1)), m.group(2).strip()
        trail = [*trail[: level - 1], title]
        heading, body = " > ".join(t for t in trail if t), []
    close()
    seen: set[str] = set()
    unique = []
    for p in passages:  # two sections of the same name: the second one's ref says which
        ref, n = p.ref, 1
        while ref in seen:
            n += 1
            ref = f"{p.ref} ({n})"
        seen.add(ref)
        unique.append(p if ref == p.ref else Passage(ref=ref, source=p.source, heading=p.heading, text=p.text))
    return unique


def load_folder(folder: Path) -> list[Passage]:
    """The passages of every ``*.md`` under ``folder``, in path order (sources relative to it)."""
    out: list[Passage] = []
    for path in sorted(folder.rglob("*.md")):
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            out.extend(split_markdown(text, path.relative_to(folder).as_posix()))
    return out


def _fields(schema: dict[str, Any]) -> list[str]:
    props = schema.get("properties")
    return [str(k) for k in props] if isinstance(props, dict) else []


def _tool_text(spec: dict[str, Any]) -> str:
    """What the catalog index knows of a tool: its name's parts, description, field names."""
    name = str(spec["name"])
    words = [name, name.replace(".", " ").replace("_", " "), str(spec.get("description", ""))]
    words += _fields(spec.get("input_schema", {})) + _fields(spec.get("output_schema", {}))
    return " ".join(words)


@dataclass(frozen=True, slots=True)
class Hit:
    passage: Passage
    score: float


class DocsIndex:
    """Passages and tools in an in-memory FTS5 database (one per process; not shared
    between threads)."""

    def __init__(self, passages: Iterable[Passage], catalog: Catalog | None = None) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(
            "CREATE VIRTUAL TABLE passages USING fts5(ref UNINDEXED, source UNINDEXED, heading, body, "
            "tokenize = 'porter unicode61 remove_diacritics 2')"
        )
        self._db.execute(
            "CREATE VIRTUAL TABLE tools USING fts5(name UNINDEXED, body, "
            "tokenize = 'porter unicode61 remove_diacritics 2')"
        )
        self._passages: dict[str, Passage] = {}
        for p in passages:
            self._add(p)
        self.tool_names: tuple[str, ...] = ()
        if catalog is not None:
            for name, spec in catalog.items():
                for p in split_markdown(spec.docs, f"tool:{name}") if spec.docs else []:
                    self._add(p)
            rows = [
                (str(d["name"]), _tool_text(d) + " " + catalog[str(d["name"])].docs)
                for d in catalog.describe()
                if d.get("safety") != Safety.PROHIBITED.value
            ]
            self._db.executemany("INSERT INTO tools VALUES (?, ?)", rows)
            self.tool_names = tuple(sorted(r[0] for r in rows))
        self._db.commit()

    def _add(self, p: Passage) -> None:
        if p.ref in self._passages:
            return
        self._passages[p.ref] = p
        self._db.execute("INSERT INTO passages VALUES (?, ?, ?, ?)", (p.ref, p.source, p.heading, p.text))

    def __len__(self) -> int:
        return len(self._passages)

    def search(self, text: str, *, limit: int = 5, tool: str | None = None) -> list[Hit]:
        """The passages most relevant to ``text``, best first (BM25, a heading's words weighing
        twice a body's); ``tool``'s own documentation first when given."""
        query = fts_query(text)
        hits: list[Hit] = []
        if tool is not None:
            own = [p for p in self._passages.values() if p.source == f"tool:{tool}"]
            hits.extend(Hit(p, 0.0) for p in own[:limit])
        if query and len(hits) < limit:
            rows = self._db.execute(
                "SELECT ref, bm25(passages, 0.0, 0.0, 2.0, 1.0) AS score FROM passages WHERE passages MATCH ? "
                "ORDER BY score, ref LIMIT ?",
                (query, limit + len(hits)),
            ).fetchall()
            taken = {h.passage.ref for h in hits}
            hits.extend(Hit(self._passages[r], float(s)) for r, s in rows if r not in taken)
        return hits[:limit]

    def tools(self, text: str, *, limit: int) -> list[str]:
        """The names of the (at most ``limit``) catalog tools most relevant to ``text``, best first."""
        query = fts_query(text)
        if not query:
            return []
        rows = self._db.execute(
            "SELECT name, bm25(tools) AS score FROM tools WHERE tools MATCH ? ORDER BY score, name LIMIT ?",
            (query, limit),
        ).fetchall()
        return [str(r[0]) for r in rows]


def bounded(passages: Sequence[Passage], max_chars: int) -> list[Passage]:
    """The passages, in order, while their text fits in ``max_chars`` (a passage that alone
    does not fit is cut, with a mark, so the best one is never dropped for its length)."""
    out: list[Passage] = []
    left = max_chars
    for p in passages:
        if len(p.text) <= left:
            out.append(p)
            left -= len(p.text)
        elif not out and left > 80:
            out.append(Passage(ref=p.ref, source=p.source, heading=p.heading, text=p.text[: left - 6] + " [...]"))
            break
        else:
            break
    return out
