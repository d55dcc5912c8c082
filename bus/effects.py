"""Effects: what a handler learned from outside, one typed record per kind of answer.

A handler learns nothing from outside except through its context, and the context records
each answer as one of the Structs below (the union :data:`Effect` is the schema), in order,
on the handler's first output (or in an ``effects_recorded`` event when it has none). A
replay serves the same answers back, matching each question by the effect's :attr:`kind`
(its tag) and :attr:`key` (what was asked), which each type builds in one place.

    kind      type               key                              the answer
    tool      ToolCalled         "<tool>:<digest of inputs>"      the output, or the failure
    library   LibrarySearched    "<digest of the request>"        the closest plan, or none
    budget    BudgetDecided      "<call>:<cache key or ''>"       the decision, and what was asked
    llm       ModelCalled        "<call>:<ask>"                   the response, the provider's
                                                                  error, a cached answer, or
                                                                  no provider at all
    settle    CallSettled        "<call>:<reservation id>"        what a granted call cost
    estimate  Estimated          "<tool>:<digest of the asks>"    a dry run's quote for one step:
                                                                  the worst case of the
                                                                  consultations a real run could
                                                                  make, and this process's past
                                                                  runs of the tool
    ground    Grounded           "<call>:<digest of the query>"   what a prompt was built from:
                                                                  similar past plans, passages of
                                                                  documentation, and the tools
                                                                  retrieved from a large catalog

Readers ``match`` over :data:`Effect` and end in ``assert_never``. The clock is not an
effect: a handler's time is its invocation's ``at``, recorded on its outputs.

Wire form (since v3 of every event type)::

    {"kind": "tool", "tool": "sql.query", "inputs": "4d0dc12434554be6", "output": {…},
     "retryable": false, "refused": null, "error": null, "ms": 2.1}

Events written before v3 hold ``{kind, key, value, error, ms}``: :func:`bus.upcast.effect_v2`
reads that form as these types (stored bytes are never rewritten).
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any, ClassVar, Literal

import msgspec

from cadre.bus.ledger import Decision
from cadre.bus.plan import ErrorInfo, Plan

__all__ = [
    "NO_PROVIDER",
    "Asked",
    "BudgetDecided",
    "CallSettled",
    "Effect",
    "Estimated",
    "LLMResponse",
    "LibraryHit",
    "LibraryNear",
    "LibrarySearched",
    "ModelCalled",
    "ModelOutcome",
    "ProviderFailure",
    "Quote",
    "ToolCalled",
    "Usage",
    "digest",
]


def digest(value: Any, size: int = 8) -> str:
    """A stable hex digest (``2 * size`` characters) of a JSON value; key order does not matter."""
    return hashlib.blake2b(_canonical(value).encode(), digest_size=size).hexdigest()


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


class _Canonical(threading.local):
    """``json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)``, the text a
    :func:`digest` hashes, without building a new encoder per call (json.dumps with arguments
    builds a ``JSONEncoder`` and its C encoder every time: 5 us against 0.5 us for a small dict).
    The same C encoder with the same settings, so the same text. One per thread (the encoder
    remembers the containers it is inside of, to refuse a circular value), and built anew after
    an error, so no half-done walk is remembered."""

    def __init__(self) -> None:
        self._encode = self._make()

    @staticmethod
    def _make() -> Any:
        make = getattr(json.encoder, "c_make_encoder", None)
        if make is None:  # a Python without the C accelerator: json.dumps itself
            return None
        return make({}, str, json.encoder.encode_basestring_ascii, None, ":", ",", True, False, True)

    def __call__(self, value: Any) -> str:
        encode = self._encode
        if encode is None:
            return _dumps(value)
        if isinstance(value, str):
            return json.encoder.encode_basestring_ascii(value)
        try:
            return "".join(encode(value, 0))
        except BaseException:
            self._encode = self._make()
            raise


_canonical = _Canonical()


# -- what the answers hold -------------------------------------------------------------------------


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens of one call, split by how they are billed.

    ``input_tokens`` are the input tokens billed at the full input rate: they exclude
    ``cache_read_tokens`` (served from a prompt cache) and ``cache_write_tokens`` (written to
    it). ``output_tokens`` include any thinking tokens.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )

    @property
    def total_input_tokens(self) -> int:
        """Every input token, whatever its rate."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens


class LLMResponse(msgspec.Struct, frozen=True, kw_only=True):
    """What a provider answered.

    ``output`` is the JSON object the model produced, or ``None`` when its answer held no
    JSON object (the structured flow then asks for a repair). ``text`` is the raw answer:
    the JSON text the model wrote (for a tool call, the tool input encoded as JSON), so a
    repair prompt can quote it. ``model`` is the model that answered as the API reported it.
    """

    provider: str
    model: str
    output: dict[str, Any] | None
    text: str
    usage: Usage
    stop_reason: str
    latency_ms: float
    request_id: str | None = None


class ProviderFailure(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The provider error a model call ended with (``planner.providers.ProviderError``'s fields)."""

    code: str
    what: str = ""
    status: int | None = None
    retryable: bool | None = None


class LibraryNear(msgspec.Struct, frozen=True, kw_only=True):
    """A library entry close to a request: its parameters (``n: int = 3, ...``), an example
    of the question it answers and, when it does not serve the request, what did not fit."""

    name: str
    source: str
    score: float
    params: str
    example: str
    misfits: tuple[str, ...] = ()


class LibraryHit(msgspec.Struct, frozen=True, kw_only=True):
    """The library's closest plan; the planner reuses it only when it ``fits`` (the request
    binds to its parameters) and ``score >= threshold``. A fitting hit's ``plan`` is bound to
    the request's values (``bindings``); an unfitting one's says ``why_not``. ``closest``
    lists the nearest entries for the no-plan message. (Hits recorded before the library
    took parameters have only the first five fields: they fit, as they did then.)"""

    name: str
    source: str
    score: float
    threshold: float
    plan: Plan
    fits: bool = True
    bindings: dict[str, Any] = {}
    why_not: str = ""
    closest: tuple[LibraryNear, ...] = ()


class Asked(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What a budget consultation asked (its id and workflow are the input's; its call kind and
    cache key are in the effect), so an audit can show it and a replay can configure its model
    and a what-if re-decide it."""

    provider: str
    model: str
    est_input_tokens: int
    max_output_tokens: int
    intelligence: str = "adaptive"
    mode: str = "adaptive"
    budget_usd: float | None = None
    max_input_tokens: int | None = None  # None: asked before the input bound (the older worst-case rule)
    attempt: int = 0  # 0, or the number of the fallback provider asked (cadre.actors.inference.falls_back)


# -- the effects -----------------------------------------------------------------------------------


class ToolCalled(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="tool", tag_field="kind"):
    """A tool ran: its ``output``, or ``error`` (then ``retryable``, and ``refused``: the output
    an ``invalid_output`` failure refused, as JSON data)."""

    KIND: ClassVar[str] = "tool"
    tool: str
    inputs: str  # digest of the inputs
    output: dict[str, Any] | None = None
    retryable: bool = False
    refused: Any = None
    error: ErrorInfo | None = None
    ms: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.tool}:{self.inputs}"

    @staticmethod
    def digest_of(inputs: dict[str, Any]) -> str:
        """The ``inputs`` of a call with these inputs."""
        return digest(inputs)

    @staticmethod
    def key_of(tool: str, inputs: dict[str, Any]) -> str:
        """The key of the call of ``tool`` with ``inputs``."""
        return f"{tool}:{ToolCalled.digest_of(inputs)}"


class LibrarySearched(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="library", tag_field="kind"):
    """The plan library was searched: its closest plan, or None."""

    KIND: ClassVar[str] = "library"
    request: str  # digest of the request
    hit: LibraryHit | None = None
    error: ErrorInfo | None = None
    ms: float = 0.0

    @property
    def key(self) -> str:
        return self.request

    @staticmethod
    def key_of(request: str) -> str:
        return digest(request)


class BudgetDecided(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="budget", tag_field="kind"):
    """The budget answered a consultation for a ``call`` (``plan``, ``decide``, …): the
    ``decision``, and what was ``asked`` (None in records that did not keep it)."""

    KIND: ClassVar[str] = "budget"
    call: str
    cache_key: str = ""
    decision: Decision
    asked: Asked | None = None
    error: ErrorInfo | None = None
    ms: float = 0.0

    @property
    def key(self) -> str:
        return self.key_of(self.call, self.cache_key)

    @staticmethod
    def key_of(call: str, cache_key: str | None) -> str:
        return f"{call}:{cache_key or ''}"


ModelOutcome = Literal["answered", "failed", "cached", "no_provider"]
"""``answered``: the provider's ``response``; ``failed``: its ``failure`` (and the billed
``usage``, if any); ``cached``: the budget served a cached answer, nobody was called;
``no_provider``: this process has no model, nobody was asked."""


class ModelCalled(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="llm", tag_field="kind"):
    """The model was asked for a ``call`` (or would have been: ``outcome``).

    ``ask`` names what was asked: the digest of (system, prompt, model) of a call, the cache
    key of a cached answer, ``-`` when there is no provider.
    """

    KIND: ClassVar[str] = "llm"
    call: str
    ask: str
    outcome: ModelOutcome
    response: LLMResponse | None = None
    failure: ProviderFailure | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    ms: float = 0.0

    @property
    def key(self) -> str:
        return self.key_of(self.call, self.ask)

    @staticmethod
    def key_of(call: str, ask: str) -> str:
        return f"{call}:{ask}"

    @staticmethod
    def ask_of(system: str, prompt: str, model: str) -> str:
        """The ``ask`` of a call of the model with this prompt."""
        return digest([system, prompt, model], size=8)


NO_PROVIDER = "-"
"""The ``ask`` of a :class:`ModelCalled` when the process has no provider."""


class CallSettled(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="settle", tag_field="kind"):
    """The budget was told what a granted ``call`` used: its ``cost_usd`` (the reservation when
    the budget did not acknowledge the settlement)."""

    KIND: ClassVar[str] = "settle"
    call: str
    reservation_id: str
    cost_usd: float = 0.0
    acknowledged: bool = False
    error: ErrorInfo | None = None
    ms: float = 0.0

    @property
    def key(self) -> str:
        return self.key_of(self.call, self.reservation_id)

    @staticmethod
    def key_of(call: str, reservation_id: str) -> str:
        return f"{call}:{reservation_id}"


class Quote(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What one kind of consultation (``call``) a real run of a step could make would cost at
    worst: ``times`` calls (repair rounds included) of ``est_input_tokens`` each, priced by the
    budget's own rule: the input bound ``max_input_tokens``
    (:func:`cadre.planner.providers.pricing.bound_usd`), or, in quotes recorded before it, the
    estimate times the safety factor (:func:`cadre.planner.providers.pricing.worst_case`). ``allowed``: the
    workflow's level and mode allow the kind and this process has a model; else ``why`` not
    (and ``worst_usd`` is 0)."""

    call: str
    times: int
    est_input_tokens: int
    allowed: bool
    why: str = ""
    provider: str | None = None
    model: str | None = None
    max_output_tokens: int = 0
    worst_usd: float = 0.0
    max_input_tokens: int | None = None  # the input bound that priced it; None: the older estimate rule


class Estimated(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="estimate", tag_field="kind"):
    """A dry run's quote for one step of ``tool``: the worst case of each consultation a real
    run could make (``quotes``), and what this process saw of past live runs: ``past_tool_runs``
    successful runs of the tool taking ``past_tool_ms`` on average; ``past_usd`` settled on
    execution-time consultations over ``past_steps`` tool calls. ``cap_usd``: the workflow's cap
    (its ``budget_usd``, else the deployment's), which no spend exceeds. ``asks`` is the digest
    of the question (each call, its count and its input estimate)."""

    KIND: ClassVar[str] = "estimate"
    tool: str
    asks: str
    quotes: tuple[Quote, ...] = ()
    past_tool_runs: int = 0
    past_tool_ms: float | None = None
    past_steps: int = 0
    past_usd: float = 0.0
    cap_usd: float | None = None  # the workflow's cap on LLM spend: the budget denies any call beyond it
    error: ErrorInfo | None = None
    ms: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.tool}:{self.asks}"

    @staticmethod
    def asks_of(asks: list[tuple[str, int, int]]) -> str:
        """The ``asks`` of a question: (call, times, estimated input tokens) of each consultation."""
        return digest([list(a) for a in asks])

    @property
    def worst_usd(self) -> float:
        """Every allowed consultation, every time, at the budget's worst case."""
        return round(sum(q.worst_usd for q in self.quotes if q.allowed), 8)

    @property
    def expected_usd(self) -> float | None:
        """The execution-time spend of an average past tool call, or None without past runs."""
        return round(self.past_usd / self.past_steps, 8) if self.past_steps else None


class Passage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A passage of documentation a consultation was grounded in: ``ref`` names it
    (``<source>#<heading>``; a tool's documentation's source is ``tool:<name>``)."""

    ref: str
    source: str
    heading: str
    text: str


class Example(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A plan of the library shown to the planner as an example: its entry's ``name`` and
    ``source``, the ``request`` it answered and the ``plan``."""

    name: str
    source: str
    request: str
    plan: Plan


class Grounded(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag="ground", tag_field="kind"):
    """What a ``call``'s prompt was built from, retrieved for the ``query`` (its digest):
    similar completed ``examples`` of the plan library, ``passages`` of documentation, and, for
    a catalog too large to list, the ``tools`` retrieved for it (None: every tool). A replay
    builds the same prompt from it; the audit lists it. Records made before grounding have
    none: their prompts were built without."""

    KIND: ClassVar[str] = "ground"
    call: str
    query: str
    examples: tuple[Example, ...] = ()
    passages: tuple[Passage, ...] = ()
    tools: tuple[str, ...] | None = None
    error: ErrorInfo | None = None
    ms: float = 0.0

    @property
    def key(self) -> str:
        return self.key_of(self.call, self.query)

    @staticmethod
    def key_of(call: str, query: str) -> str:
        return f"{call}:{query}"

    @staticmethod
    def query_of(text: str) -> str:
        """The recorded ``query`` of a retrieval for ``text``."""
        return digest(text)

    @property
    def references(self) -> tuple[str, ...]:
        """The documents the prompt used: each passage's ``ref``, in order."""
        return tuple(p.ref for p in self.passages)

    @property
    def empty(self) -> bool:
        return not self.examples and not self.passages and self.tools is None


Effect = ToolCalled | LibrarySearched | BudgetDecided | ModelCalled | CallSettled | Estimated | Grounded
"""One outside answer; the union is the schema of an envelope's ``effects``."""
