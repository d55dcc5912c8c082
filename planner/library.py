"""The plan library: known-good plans with typed parameters, reused only for the question they answer.

Entries come from ``examples/plans/*.json`` (:func:`load_entries`, the one function of the
planner that reads files) and from completed workflows (:func:`entry_from_workflow`: the
request's literals that the plan holds become parameters). :func:`match` decides, purely and
deterministically, which entry serves a request: the request must *bind* to the entry's
parameters (:mod:`cadre.planner.binding`: every year, number, date, quoted value taken by a
parameter; every word covered; comparatives such as most/least read as a choice), and among
the entries it binds to, the most similar wins. A request that binds to none is not served:
the outcome names the closest entries and exactly what did not fit.

Similarity. Both texts become tokens (:func:`cadre.planner.words.tokens`: lowercase, number
words as digits, stop words dropped, light stemming); :func:`similarity` leaves the literals
out and takes the best of an entry's phrasings (its request and examples). The score is

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import msgspec

from cadre.bus.errors import CadreError
from cadre.bus.plan import Plan
from cadre.planner.binding import (
    FILLER,
    QUOTED,
    Binding,
    Param,
    ParamType,
    Slot,
    bind,
    bind_plan,
    placeholders,
    read_request,
    take_phrases,
)
from cadre.planner.words import NUMBER_WORDS, STOP_WORDS, tokens

__all__ = [
    "NUMBER_WORDS",
    "STOP_WORDS",
    "Candidate",
    "LibraryEntry",
    "LibraryError",
    "Match",
    "Outcome",
    "check_entry",
    "entry_from_workflow",
    "load_entries",
    "match",
    "rank",
    "search",
    "similarity",
    "tokens",
]

COSINE_WEIGHT = 0.7
JACCARD_WEIGHT = 0.3


@dataclass(frozen=True, slots=True)
class LibraryEntry:
    """A known plan, the request it answers and the parameters it takes.

    ``source`` says where it came from ("examples/plans/x.json" or "workflow:<id>") and
    ``origin`` how it was made: "example" (a file), "model" (a model's plan that completed)
    or "explicit" (a client's plan that completed, when the deployment lets those join).
    ``examples`` are other wordings of the same question, ``words`` further words the plan
    covers, ``requires`` groups of words of which a request must hold one each.
    """

    name: str
    request: str
    plan: Plan
    source: str
    params: dict[str, Param] = field(default_factory=dict)
    examples: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    requires: tuple[tuple[str, ...], ...] = ()
    origin: str = "example"

    @property
    def phrasings(self) -> tuple[str, ...]:
        return (self.request, *self.examples)

    @property
    def vocabulary(self) -> frozenset[str]:
        """The words this entry covers (stemmed; literals excluded: parameters take those)."""
        out: set[str] = set()
        for text in (*self.phrasings, *self.words, *(w for g in self.requires for w in g)):
            words = read_request(text)[1]
            take_phrases(words, self.params)  # a phrase's words name its value, nothing else
            out.update(words)
        for p in self.params.values():
            for choice in p.choices.values():
                out.update(t for w in choice.words if len(tokens(w)) == 1 for t in tokens(w))
        return frozenset(out)


@dataclass(frozen=True, slots=True)
class Match:
    """The best entry for a request and its score in [0, 1]."""

    entry: LibraryEntry
    score: float


@dataclass(frozen=True, slots=True)
class Candidate:
    """An entry weighed for a request: its similarity and how the request binds to it."""

    entry: LibraryEntry
    score: float
    binding: Binding


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of :func:`match`: the entry that serves the request with its bound plan, or
    none; ``closest`` are the best candidates (the served one first when there is one)."""

    served: Candidate | None
    plan: Plan | None
    closest: tuple[Candidate, ...]

    def why_not(self) -> str:
        """What did not fit in the closest entry (empty when the request is served)."""
        if self.served is not None:
            return ""
        if not self.closest:
            return "no entry of the plan library is like this request"
        c = self.closest[0]
        return f"the closest plan, {c.entry.name!r} (similarity {c.score:.2f}), does not fit: " + "; ".join(
            c.binding.misfits
        )


class LibraryError(CadreError):
    """A library file that is not a valid entry; ``path`` is the JSON path of the problem."""

    code = "plan_library_error"

    def __init__(self, file: str, reason: str, path: str = "$") -> None:
        super().__init__(f"plan library file {file} is not a valid entry at {path}: {reason}; fix or remove the file")
        self.file = file
        self.reason = reason
        self.path = path


# -- similarity ------------------------------------------------------------------------------


def _vector(counts: Counter[str], idf: dict[str, float], unseen: float) -> dict[str, float]:
    return {t: n * idf.get(t, unseen) for t, n in counts.items()}


def _cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(w * b[t] for t, w in a.items() if t in b)
    norm = math.sqrt(sum(w * w for w in a.values())) * math.sqrt(sum(w * w for w in b.values()))
    return dot / norm if norm else 0.0


def _idf(docs: Sequence[Counter[str]]) -> tuple[dict[str, float], float]:
    n = len(docs)
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(doc.keys())
    idf = {t: math.log((1 + n) / (1 + d)) + 1 for t, d in df.items()}
    return idf, math.log(1 + n) + 1  # the weight of a token no document has (df = 0)


def _similarity(query: Counter[str], doc: Counter[str], idf: dict[str, float], unseen: float) -> float:
    union = query.keys() | doc.keys()
    jaccard = len(query.keys() & doc.keys()) / len(union) if union else 0.0
    value = COSINE_WEIGHT * _cosine(_vector(query, idf, unseen), _vector(doc, idf, unseen)) + JACCARD_WEIGHT * jaccard
    return round(min(1.0, max(0.0, value)), 6)


def _similarities(query: Counter[str], docs: Sequence[Counter[str]]) -> list[float]:
    idf, unseen = _idf(docs)
    return [_similarity(query, doc, idf, unseen) for doc in docs]


def _scores(request: str, entries: Sequence[LibraryEntry]) -> list[float]:
    return _similarities(Counter(tokens(request)), [Counter(tokens(e.request)) for e in entries])


def rank(request: str, entries: Sequence[LibraryEntry]) -> list[Match]:
    """Every entry with the similarity of its request to ``request``, best first (ties: by name, then source)."""
    matches = [Match(entry=e, score=s) for e, s in zip(entries, _scores(request, entries), strict=True)]
    return sorted(matches, key=lambda m: (-m.score, m.entry.name, m.entry.source))


def search(request: str, entries: Sequence[LibraryEntry], *, threshold: float = 0.35) -> Match | None:
    """The most similar entry for ``request`` if it scores at least ``threshold``, else None
    (similarity only: :func:`match` decides whether an entry may serve a request)."""
    ranked = rank(request, entries)
    if not ranked or ranked[0].score < threshold or ranked[0].score == 0.0:
        return None
    return ranked[0]


def _content(text: str) -> list[str]:
    """The words of ``text`` that say what it asks: literals and filler words left out."""
    return [w for w in read_request(text)[1] if w not in FILLER]


def _choice_marks(entry: LibraryEntry) -> dict[str, str]:
    """Each word of the entry's choice parameters -> ``<param>`` (all values of one parameter alike)."""
    return {
        t: f"<{name}>"
        for name, p in entry.params.items()
        for c in p.choices.values()
        for w in c.words
        for t in tokens(w)
    }


def similarity(request: str, entries: Sequence[LibraryEntry]) -> list[float]:
    """Per entry, the best similarity of ``request`` to any of its phrasings, in [0, 1].

    Literals and filler words ("show", "list") are left out (a year or a count is a
    parameter, not a word to share), and the
    words of the entry's choice parameters count as the parameter ("least" and "most" are
    both ``<order>`` for an entry with an ``order`` choice): the similarity says whether the
    request asks the entry's question, not whether it picks the same values.
    """
    words = _content(request)
    raw = [[_content(text) for text in e.phrasings] for e in entries]
    idf, unseen = _idf([Counter(doc) for docs in raw for doc in docs])
    best: list[float] = []
    for e, docs in zip(entries, raw, strict=True):
        marks = _choice_marks(e)
        query = Counter(marks.get(t, t) for t in words)
        best.append(
            max((_similarity(query, Counter(marks.get(t, t) for t in d), idf, unseen) for d in docs), default=0.0)
        )
    return best


def match(request: str, entries: Sequence[LibraryEntry], *, threshold: float = 0.35, keep: int = 3) -> Outcome:
    """The entry that serves ``request``, with its plan bound to the request's values, or none.

    An entry serves a request when the request binds to it (:func:`cadre.planner.binding.bind`:
    every literal taken by a parameter, every word covered, its required words present) and
    its similarity is at least ``threshold``; among those, the most similar wins (ties: by
    name, then source). ``closest`` holds the ``keep`` best candidates: the served one, then
    those the request binds to but that fall short of the threshold, then the most similar.
    Pure and deterministic: the same request and entries give the same outcome.
    """
    scored = [
        Candidate(entry=e, score=s, binding=bind(request, e.params, e.vocabulary, e.requires))
        for e, s in zip(entries, similarity(request, entries), strict=True)
    ]
    binds = {id(c.entry) for c in scored if c.binding.fits}
    below = [
        Candidate(
            entry=c.entry,
            score=c.score,
            binding=Binding(misfits=(f"its similarity {c.score:.2f} is below the threshold {threshold:.2f}",)),
        )
        if c.binding.fits and c.score < threshold
        else c
        for c in scored
    ]
    # Served first, then entries the request binds to (below the threshold), then by similarity.
    ordered = sorted(
        below,
        key=lambda c: (
            not c.binding.fits,
            id(c.entry) not in binds,
            -c.score,
            len(c.binding.misfits),
            c.entry.name,
            c.entry.source,
        ),
    )
    ordered = [c for c in ordered if c.binding.fits or c.score > 0.0]
    closest = tuple(ordered[:keep])
    if closest and closest[0].binding.fits:
        best = closest[0]
        bound = bind_plan(best.entry.plan, best.entry.params, best.binding.values)
        return Outcome(served=best, plan=bound, closest=closest)
    return Outcome(served=None, plan=None, closest=closest)


# -- entries ---------------------------------------------------------------------------------


class _EntryFile(msgspec.Struct, forbid_unknown_fields=True):
    """A library file. Hand-written, so unknown top-level fields (typos) are errors."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    request: Annotated[str, msgspec.Meta(min_length=1)]
    plan: Plan
    params: dict[str, Param] = {}
    examples: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    requires: tuple[tuple[str, ...], ...] = ()


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


def check_entry(entry: LibraryEntry) -> tuple[str, str] | None:
    """The first problem of an entry's parameters as ``(json path, reason)``, else None:
    a placeholder naming no parameter or attribute, a choice without values, a default
    outside the choices, and the entry's own request not binding to it."""
    for name, p in entry.params.items():
        if p.type == "choice" and not p.choices:
            return f"$.params.{name}.choices", "a choice parameter needs at least one value"
        if p.type == "choice" and not p.required and p.default is not None and p.default not in p.choices:
            return f"$.params.{name}.default", f"{p.default!r} is not one of {sorted(p.choices)}"
    for name, attr in sorted(placeholders(entry.plan), key=lambda x: (x[0], x[1] or "")):
        used = entry.params.get(name)
        if used is None:
            return "$.plan", f"the placeholder {{{{{name}}}}} names no parameter"
        p = used
        if attr is not None and attr not in ("label", "file") and any(attr not in c.attrs for c in p.choices.values()):
            return "$.plan", f"the placeholder {{{{{name}.{attr}}}}} names an attribute not every choice of {name} has"
        if attr is not None and attr not in ("label", "file") and p.type != "choice":
            return "$.plan", f"the placeholder {{{{{name}.{attr}}}}}: only choices have attributes"
    for i, text in enumerate(entry.phrasings):
        b = bind(text, entry.params, entry.vocabulary, entry.requires)
        if not b.fits:
            where = "$.request" if i == 0 else f"$.examples[{i - 1}]"
            return where, f"{text!r} does not bind to the entry's own parameters: {'; '.join(b.misfits)}"
    return None


def load_entries(directory: Path) -> list[LibraryEntry]:
    """The entries of the ``*.json`` files in ``directory``, sorted by file name.

    Each file is ``{"name": ..., "request": ..., "plan": {...}}`` with optional ``params``,
    ``examples``, ``words`` and ``requires`` (see :class:`LibraryEntry` and
    :class:`cadre.planner.binding.Param`). Raises :class:`LibraryError` naming the file and
    the JSON path of the first problem (a missing directory, unreadable or malformed JSON, a
    field of the wrong type, a name used twice, a placeholder naming no parameter, an entry
    whose own request or examples do not bind to it). The plans are decoded, not validated:
    :func:`planner.validation.validate_plan` does that when a plan is used.
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
        entry = LibraryEntry(
            name=raw.name,
            request=raw.request,
            plan=raw.plan,
            source=source,
            params=raw.params,
            examples=raw.examples,
            words=raw.words,
            requires=raw.requires,
        )
        problem = check_entry(entry)
        if problem is not None:
            raise LibraryError(source, problem[1], problem[0])
        entries.append(entry)
    return entries


# -- learned entries -------------------------------------------------------------------------

_PARAM_TYPE: dict[str, ParamType] = {
    "year": "year",
    "int": "int",
    "date": "date",
    "month": "month",
    "text": "text",
    "literal": "literal",
}


def _replace_literal(node: Any, slot: Slot, mark: str) -> tuple[Any, int]:
    """``node`` with the literal of ``slot`` replaced by ``mark``, and how many times it was.

    Whole values equal to the literal are replaced anywhere; inside longer strings only
    years, dates and quoted texts are (at word boundaries): a small number like 3 may be
    anything inside a string ("rows[0][3]"), so it is only taken as a whole value.
    """
    if isinstance(node, bool):
        return node, 0
    if isinstance(node, int) and slot.kind in ("int", "year") and node == slot.value:
        return mark, 1
    if isinstance(node, str):
        if node == str(slot.value):
            return mark, 1
        if slot.kind in ("year", "date", "text"):
            pattern = re.compile(rf"(?<![0-9A-Za-z-]){re.escape(str(slot.value))}(?![0-9A-Za-z-])")
            new, count = pattern.subn(mark, node)
            return new, count
        return node, 0
    if isinstance(node, list | tuple):
        total = 0
        out = []
        for v in node:
            nv, c = _replace_literal(v, slot, mark)
            out.append(nv)
            total += c
        return out, total
    if isinstance(node, dict):
        total = 0
        res: dict[str, Any] = {}
        for k, v in node.items():
            res[k], c = _replace_literal(v, slot, mark)
            total += c
        return res, total
    return node, 0


def entry_from_workflow(workflow_id: str, request: str, plan: Plan, *, origin: str = "model") -> LibraryEntry:
    """A library entry for a completed workflow's plan, named after the workflow.

    The request's literals (years, numbers, dates, months, quoted texts) that the plan
    holds become parameters (``p1``, ``p2``, ... with the run's values as defaults), so the
    same question with other values is served with those values; a literal the plan does
    not hold stays fixed (a request must carry the same value). Every word of the request
    is required: the entry serves the same question only, in any order and with other
    values for its parameters.
    """
    slots, _ = read_request(request)
    raw: Any = msgspec.to_builtins(plan)
    params: dict[str, Param] = {}
    for i, slot in enumerate(slots, start=1):
        name = f"p{i}"
        kind = slot.kind
        if any(p.only is msgspec.UNSET and p.default == slot.value for p in params.values()):
            params[name] = Param(type=_PARAM_TYPE[kind], default=slot.value, only=slot.value)  # seen twice: fixed
            continue
        raw, count = _replace_literal(raw, slot, f"{{{{{name}}}}}")
        if count:
            params[name] = Param(type=_PARAM_TYPE[kind], default=slot.value)
        else:
            params[name] = Param(type=_PARAM_TYPE[kind], default=slot.value, only=slot.value)
    learned = msgspec.convert(raw, Plan)
    plain = QUOTED.sub(" ", request).lower()
    kept = [w for w in re.split(r"[^a-z0-9]+", plain) if w and read_request(w)[1] and not set(tokens(w)) <= FILLER]
    requires = tuple((w,) for w in dict.fromkeys(kept))
    return LibraryEntry(
        name=workflow_id,
        request=request,
        plan=learned,
        source=f"workflow:{workflow_id}",
        params=params,
        requires=requires,
        origin=origin,
    )
