"""The plan library: known-good plans, found again by the similarity of their requests.

Entries come from ``examples/plans/*.json`` (:func:`load_entries`, the one function of the
planner that reads files) and from completed workflows (:func:`entry_from_workflow`).
:func:`search` finds the entry whose request is most like a new one, deterministically: the
same request and entries always give the same match and score.

Scoring. Both texts become tokens: lowercase, split on anything not a letter or digit, the
number words one..ten mapped to digits ("three" -> "3"), a short list of stop words dropped,
and light stemming (plural "s"/"ies", "ing", "ed", a final "e"; "customers" -> "customer",
"writing" and "write" -> "writ"). The score is

    0.7 * cosine(tf-idf(request), tf-idf(entry))  +  0.3 * jaccard(tokens(request), tokens(entry))

with term frequencies as counts and a smoothed inverse document frequency computed over the
entries themselves, ``idf(t) = ln((1 + N) / (1 + df(t))) + 1`` (N entries, df(t) entries
containing t; a token no entry has gets the highest weight, so it lowers the cosine as an
unmatched word should). The cosine rewards the rare words two requests share; Jaccard keeps
a single shared rare word from carrying a match alone. Both are in [0, 1], so the score is.
Scores are rounded to 6 decimals before ranking so that equal texts tie exactly, and ties
go to the entry whose name sorts first.

    CadreError
     └─ LibraryError                  a library file that cannot be read as an entry (code "plan_library_error")
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import msgspec

from cadre.bus.errors import CadreError
from cadre.bus.plan import Plan

__all__ = [
    "LibraryEntry",
    "LibraryError",
    "Match",
    "entry_from_workflow",
    "load_entries",
    "rank",
    "search",
    "tokens",
]

COSINE_WEIGHT = 0.7
JACCARD_WEIGHT = 0.3

# Words that say little about what a request wants (kept short: "top", "most", "all" do matter).
_STOP_TEXT = """
a an the of in on at to for from by with and or as is are was were be been it its this that
these those i me my we our you your please what which who whom whose how do does did can could
would should will s t into about than then there their them they
"""
STOP_WORDS = frozenset(_STOP_TEXT.split())
NUMBER_WORDS = {
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_SPLIT = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True, slots=True)
class LibraryEntry:
    """A known plan and the request it answers; ``source`` says where it came from."""

    name: str
    request: str
    plan: Plan
    source: str  # "examples/plans/x.json" or "workflow:<id>"


@dataclass(frozen=True, slots=True)
class Match:
    """The best entry for a request and its score in [0, 1]."""

    entry: LibraryEntry
    score: float


class LibraryError(CadreError):
    """A library file that is not a valid entry; ``path`` is the JSON path of the problem."""

    code = "plan_library_error"

    def __init__(self, file: str, reason: str, path: str = "$") -> None:
        super().__init__(f"plan library file {file} is not a valid entry at {path}: {reason}; fix or remove the file")
        self.file = file
        self.reason = reason
        self.path = path


# -- similarity ------------------------------------------------------------------------------


def _stem(word: str) -> str:
    if word.isdigit():
        return word
    if len(word) > 4 and word.endswith("ies"):
        word = word[:-3] + "y"
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith("ed"):
        word = word[:-2]
    if len(word) > 3 and word.endswith("e"):
        word = word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """The tokens of ``text`` used for matching, in order, repeats kept (see the module docstring)."""
    out: list[str] = []
    for raw in _SPLIT.split(text.lower()):
        word = NUMBER_WORDS.get(raw, raw)
        if word and word not in STOP_WORDS:
            out.append(_stem(word))
    return out


def _vector(counts: Counter[str], idf: dict[str, float], unseen: float) -> dict[str, float]:
    return {t: n * idf.get(t, unseen) for t, n in counts.items()}


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(w * b[t] for t, w in a.items() if t in b)
    norm = math.sqrt(sum(w * w for w in a.values())) * math.sqrt(sum(w * w for w in b.values()))
    return dot / norm if norm else 0.0


def _scores(request: str, entries: Sequence[LibraryEntry]) -> list[float]:
    query = Counter(tokens(request))
    docs = [Counter(tokens(e.request)) for e in entries]
    n = len(docs)
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(doc.keys())
    idf = {t: math.log((1 + n) / (1 + d)) + 1 for t, d in df.items()}
    unseen = math.log(1 + n) + 1  # df = 0
    q = _vector(query, idf, unseen)
    out: list[float] = []
    for doc in docs:
        union = query.keys() | doc.keys()
        jaccard = len(query.keys() & doc.keys()) / len(union) if union else 0.0
        value = COSINE_WEIGHT * _cosine(q, _vector(doc, idf, unseen)) + JACCARD_WEIGHT * jaccard
        out.append(round(min(1.0, max(0.0, value)), 6))
    return out


def rank(request: str, entries: Sequence[LibraryEntry]) -> list[Match]:
    """Every entry with its score for ``request``, best first (ties: by name, then source)."""
    matches = [Match(entry=e, score=s) for e, s in zip(entries, _scores(request, entries), strict=True)]
    return sorted(matches, key=lambda m: (-m.score, m.entry.name, m.entry.source))


def search(request: str, entries: Sequence[LibraryEntry], *, threshold: float = 0.35) -> Match | None:
    """The best entry for ``request`` if it scores at least ``threshold``, else None."""
    ranked = rank(request, entries)
    if not ranked or ranked[0].score < threshold or ranked[0].score == 0.0:
        return None
    return ranked[0]


# -- entries ---------------------------------------------------------------------------------


class _EntryFile(msgspec.Struct, forbid_unknown_fields=True):
    """A library file. Hand-written, so unknown top-level fields (typos) are errors."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    request: Annotated[str, msgspec.Meta(min_length=1)]
    plan: Plan


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


def load_entries(directory: Path) -> list[LibraryEntry]:
    """The entries of the ``*.json`` files in ``directory``, sorted by file name.

    Each file is ``{"name": ..., "request": ..., "plan": {...}}``. Raises
    :class:`LibraryError` naming the file and the JSON path of the first problem (a missing
    directory, unreadable or malformed JSON, a field of the wrong type, a name used twice).
    The plans are decoded, not validated: :func:`planner.validation.validate_plan` does that
    when a plan is used.
    """
    if not directory.is_dir():
        raise LibraryError(str(directory), "the plan library directory does not exist")
    entries: list[LibraryEntry] = []
    named: dict[str, str] = {}
    for file in sorted(directory.glob("*.json")):
        source = file.as_posix()
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise LibraryError(source, f"cannot read it ({exc.strerror or exc})") from exc
        try:
            raw = msgspec.json.decode(data, type=_EntryFile)
        except msgspec.ValidationError as exc:
            m = _AT.match(str(exc))
            assert m is not None  # the pattern matches any string
            raise LibraryError(source, m["reason"], m["path"] or "$") from exc
        except msgspec.DecodeError as exc:
            raise LibraryError(source, str(exc)) from exc
        if raw.name in named:
            raise LibraryError(source, f"the name {raw.name!r} is already used by {named[raw.name]}", "$.name")
        named[raw.name] = source
        entries.append(LibraryEntry(name=raw.name, request=raw.request, plan=raw.plan, source=source))
    return entries


def entry_from_workflow(workflow_id: str, request: str, plan: Plan) -> LibraryEntry:
    """A library entry for a completed workflow's plan, named after the workflow."""
    return LibraryEntry(name=workflow_id, request=request, plan=plan, source=f"workflow:{workflow_id}")
