"""Binding a request to a library entry's parameters: pure functions, no I/O, deterministic.

A request is read as *slots* and *words*. Slots are the literal values it carries: years
(1900..2099), other numbers (digits or the words one..twenty), dates (YYYY-MM-DD), month
names, quoted text, and any other token with a digit in it ("q3", "3rd"). Words are the
remaining tokens of :func:`cadre.planner.words.tokens` (stop words dropped, lightly stemmed).

An entry fits a request when

- every slot is taken by one of the entry's parameters of that kind (a year by a ``year``
  parameter, a number by an ``int``, a quoted text by a ``text``, a date by a ``date``, a
  month by a ``month``); a literal no parameter takes does not fit;
- every word is a word the entry knows (its request and examples, its declared words, the
  words of its ``choice`` parameters, or :data:`FILLER`): an unknown word ("status",
  "cancelled", "not", "least" for an entry that only ranks by most) does not fit;
- each ``choice`` parameter is named by at most one of its values' words (both "most" and
  "least" do not fit; a value's word may be a phrase, "order items", whose words then count
  as that value only), and each group of ``requires`` is present;
- every parameter without a default got a value, and every value is within its bounds.

Otherwise the entry does not fit, and :class:`Binding` says exactly what did not. The bound
values are put into the plan by :func:`bind_plan`: a string that is exactly ``{{name}}`` (or
``{{name.attr}}``) becomes the value with its type, and inside a longer string the
placeholder is replaced by the value's text. ``attr`` is an attribute of a choice's value
(``{{order.sql}}`` -> ``DESC``), ``label`` (the parameter's ``label`` with ``{}`` formatted
by the value, or ``none_label`` when the value is null) or ``file`` (the label as a file name part).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from cadre.bus.plan import Plan
from cadre.planner.words import tokens

__all__ = [
    "FILLER",
    "Binding",
    "Choice",
    "Param",
    "ParamType",
    "Slot",
    "bind",
    "bind_plan",
    "describe_params",
    "placeholders",
    "read_request",
    "take_phrases",
]

ParamType = Literal["int", "year", "date", "month", "text", "literal", "choice"]

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
    "twenty": 20,
}
MONTHS = (
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
)
_MONTH_ABBR = {m[:3]: i + 1 for i, m in enumerate(MONTHS) if m != "may"} | {"sept": 9}

# Words that ask for an answer without changing which one (stemmed like library.tokens).
_FILLER_TEXT = """
show list give tell find get display see know want need like let me please just also
all every each there here have has had database db shop store data our sqlite
"""
QUOTED = re.compile(r"\"([^\"]+)\"|(?<![\w])'([^']+)'(?![\w])|“([^”]+)”")
_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_SPLIT = re.compile(r"[^a-z0-9]+")
_PLACEHOLDER = re.compile(r"\{\{([a-z_][a-z0-9_]*)(?:\.([a-z_][a-z0-9_]*))?\}\}")


FILLER = frozenset(tokens(_FILLER_TEXT))
"""Words any entry accepts: they ask for an answer without changing which one."""


@dataclass(frozen=True, slots=True)
class Slot:
    """A literal value of a request: its kind, its value and the text it came from."""

    kind: Literal["year", "int", "date", "month", "text", "literal"]
    value: int | str
    text: str


class Choice(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One value of a ``choice`` parameter: the words that name it and attributes for the plan."""

    words: tuple[str, ...] = ()
    attrs: dict[str, str | int | float] = {}


class Param(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A typed parameter of a library entry.

    ``default``: the value when the request names none (a parameter without ``default`` must
    be named; ``null`` is a valid default: "every year"). ``min``/``max`` bound ``int`` and
    ``year`` values. ``choices`` (type ``choice``): the values and the words naming each.
    ``one_if``: for an ``int``, words (as written, e.g. "customer") whose singular use without
    a number means 1 ("the customer who spent most"). ``only``: the one value a learned entry
    accepts (a literal it could not turn into a parameter). ``label``/``none_label``: the
    text of ``{{name.label}}``.
    """

    type: ParamType
    default: Any = msgspec.UNSET
    min: int | None = None
    max: int | None = None
    choices: dict[str, Choice] = {}
    one_if: tuple[str, ...] = ()
    only: Any = msgspec.UNSET
    label: str = "{}"
    none_label: str = ""
    describe: str = ""

    @property
    def required(self) -> bool:
        return self.default is msgspec.UNSET


_KIND_OF: dict[str, str] = {
    "int": "int",
    "year": "year",
    "date": "date",
    "month": "month",
    "text": "text",
    "literal": "literal",
}


@dataclass(frozen=True, slots=True)
class Binding:
    """How a request binds to an entry: the values, or what did not fit (``fits`` is then False)."""

    values: dict[str, Any] = field(default_factory=dict)
    misfits: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return not self.misfits


def read_request(text: str) -> tuple[list[Slot], list[str]]:
    """The slots of ``text`` (in order) and its remaining words (library tokens, in order)."""
    slots, pairs = _read(text)
    return slots, [t for _, t in pairs]


def _read(text: str) -> tuple[list[Slot], list[tuple[str, str]]]:
    """The slots of ``text`` and its words as (as written, token) pairs."""
    slots: list[Slot] = []
    lowered = text.lower()

    def quoted(m: re.Match[str]) -> str:
        value = next(g for g in m.groups() if g is not None)
        slots.append(Slot("text", value.strip(), m.group(0)))
        return " "

    rest = QUOTED.sub(quoted, text)  # quoted text keeps its case
    rest = rest.lower() if rest != text else lowered

    def date(m: re.Match[str]) -> str:
        slots.append(Slot("date", m.group(0), m.group(0)))
        return " "

    rest = _DATE.sub(date, rest)
    raw = [w for w in _SPLIT.split(rest) if w]
    words: list[tuple[str, str]] = []
    for i, w in enumerate(raw):
        nxt = raw[i + 1] if i + 1 < len(raw) else ""
        if w.isdigit():
            n = int(w)
            slots.append(Slot("year", n, w) if len(w) == 4 and 1900 <= n <= 2099 else Slot("int", n, w))
        elif w in _NUMBER_WORDS:
            slots.append(Slot("int", _NUMBER_WORDS[w], w))
        elif w in MONTHS and (w != "may" or nxt.isdigit()):
            slots.append(Slot("month", MONTHS.index(w) + 1, w))
        elif w in _MONTH_ABBR and nxt.isdigit():
            slots.append(Slot("month", _MONTH_ABBR[w], w))
        elif any(c.isdigit() for c in w):
            slots.append(Slot("literal", w, w))
        else:
            words.extend((w, t) for t in tokens(w))
    return slots, words


def _check_bounds(name: str, p: Param, value: Any) -> str | None:
    if p.only is not msgspec.UNSET and value != p.only:
        return f"{name}={value!r}: this plan was learned for {name}={p.only!r} only"
    if isinstance(value, int) and p.min is not None and value < p.min:
        return f"{name}={value} is below its minimum {p.min}"
    if isinstance(value, int) and p.max is not None and value > p.max:
        return f"{name}={value} is above its maximum {p.max}"
    return None


def _remove_run(words: list[str], seq: list[str]) -> bool:
    """Remove the first run of ``seq`` in ``words`` (in place); whether there was one."""
    for i in range(len(words) - len(seq) + 1):
        if words[i : i + len(seq)] == seq:
            del words[i : i + len(seq)]
            return True
    return False


def take_phrases(words: list[str], params: Mapping[str, Param]) -> dict[str, set[str]]:
    """Remove from ``words`` (in place) the multi-word choice phrases they hold; the values
    each parameter's phrases named."""
    phrased: dict[str, set[str]] = {}
    for name, p in params.items():
        for value, choice in p.choices.items():
            for w in choice.words:
                seq = tokens(w)
                while len(seq) > 1 and _remove_run(words, seq):
                    phrased.setdefault(name, set()).add(value)
    return phrased


def bind(
    text: str, params: Mapping[str, Param], vocabulary: frozenset[str], requires: tuple[tuple[str, ...], ...] = ()
) -> Binding:
    """Bind ``text`` to ``params``; see the module docstring for the rules. Deterministic."""
    slots, pairs = _read(text)
    words = [t for _, t in pairs]
    written = {t: w for w, t in reversed(pairs)}  # a token's first spelling in the request
    values: dict[str, Any] = {}
    misfits: list[str] = []
    # Literals, in request order, to the parameters of their kind, in declaration order.
    free = {name: p for name, p in params.items() if p.type != "choice"}
    for slot in slots:
        taker = next((n for n, p in free.items() if _KIND_OF[p.type] == slot.kind and n not in values), None)
        if taker is None:
            what = {"int": "the number", "year": "the year", "literal": "the value"}.get(slot.kind, f"the {slot.kind}")
            literal = str(slot.value) if slot.kind == "text" else slot.text
            misfits.append(f"{what} {literal!r} (no parameter of the plan takes it)")
            continue
        values[taker] = slot.value
    # Choice words: phrases first ("order items"), whose words then name nothing else.
    phrased = take_phrases(words, params)
    word_set = set(words)
    claimed: set[str] = set()
    for name, p in params.items():
        if p.type != "choice":
            continue
        named = sorted(phrased.get(name, set()), key=list(p.choices).index)
        for value, choice in p.choices.items():
            hits = {t for w in choice.words if len(tokens(w)) == 1 for t in tokens(w)} & word_set
            if hits:
                named += [] if value in named else [value]
                claimed |= hits
        if len(named) > 1:
            misfits.append(f"{name}: the request names {' and '.join(repr(v) for v in named)}; the plan takes one")
        elif named:
            values[name] = named[0]
    known = vocabulary | FILLER | claimed
    unknown = [written[w] for w in dict.fromkeys(words) if w not in known]
    if unknown:
        misfits.append(f"the word(s) {', '.join(repr(w) for w in unknown)} (the plan does not cover them)")
    for group in requires:
        if not {t for w in group for t in tokens(w)} & word_set:
            shown = sorted(set(group))
            more = f" or {len(shown) - 6} more" if len(shown) > 6 else ""
            misfits.append(f"none of the words {', '.join(shown[:6])}{more} (the plan answers only that)")
    lowered = set(_SPLIT.split(text.lower()))
    for name, p in params.items():
        if name in values:
            continue
        if p.type == "int" and p.one_if and lowered & set(p.one_if):
            values[name] = 1
        elif p.required:
            misfits.append(f"no value for {name} ({p.type}; the plan needs one)")
        else:
            values[name] = p.default
    for name, p in params.items():
        if name in values:
            problem = _check_bounds(name, p, values[name])
            if problem:
                misfits.append(problem)
    if misfits:
        return Binding(values={}, misfits=tuple(misfits))
    return Binding(values=dict(sorted(values.items())))


def _render(name: str, attr: str | None, p: Param, value: Any) -> Any:
    if attr is None:
        return value
    if attr in ("label", "file"):
        text = p.none_label if value is None else p.label.format(value)
        return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") if attr == "file" else text
    choice = p.choices.get(str(value))
    if choice is None or attr not in choice.attrs:
        raise KeyError(f"{{{{{name}.{attr}}}}}")
    return choice.attrs[attr]


def _substitute(node: Any, params: Mapping[str, Param], values: Mapping[str, Any]) -> Any:
    if isinstance(node, str):
        whole = _PLACEHOLDER.fullmatch(node)
        if whole:
            return _render(whole[1], whole[2], params[whole[1]], values[whole[1]])
        return _PLACEHOLDER.sub(lambda m: str(_render(m[1], m[2], params[m[1]], values[m[1]])), node)
    if isinstance(node, list | tuple):
        return [_substitute(v, params, values) for v in node]
    if isinstance(node, dict):
        return {k: _substitute(v, params, values) for k, v in node.items()}
    return node


def bind_plan(plan: Plan, params: Mapping[str, Param], values: Mapping[str, Any]) -> Plan:
    """``plan`` with every ``{{name}}``/``{{name.attr}}`` replaced by its bound value."""
    raw = msgspec.to_builtins(plan)
    return msgspec.convert(_substitute(raw, params, values), Plan)


def placeholders(plan: Plan) -> set[tuple[str, str | None]]:
    """Every ``(name, attr)`` placeholder in ``plan``'s strings."""
    found: set[tuple[str, str | None]] = set()

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.update((m[1], m[2]) for m in _PLACEHOLDER.finditer(node))
        elif isinstance(node, list | tuple):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            for v in node.values():
                walk(v)

    walk(msgspec.to_builtins(plan))
    return found


def describe_params(params: Mapping[str, Param]) -> str:
    """``n: int = 3, order: most|least = most, year: year = null`` (for messages)."""
    parts = []
    for name, p in params.items():
        kind = "|".join(p.choices) if p.type == "choice" else p.type
        if p.only is not msgspec.UNSET:
            parts.append(f"{name}: {kind} = {p.only!r} only")
        elif p.required:
            parts.append(f"{name}: {kind}")
        else:
            default = "null" if p.default is None else repr(p.default) if isinstance(p.default, str) else p.default
            parts.append(f"{name}: {kind} = {default}")
    return ", ".join(parts) or "no parameters"
