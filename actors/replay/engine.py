"""Deterministic replay of one workflow: re-run every handler invocation and compare.

The engine is given the handlers (:class:`~actors.runtime.ActorSpec`, as the live system
builds them: :func:`actors.specs.live_specs`) and a factory of answers for each invocation
(:class:`~actors.answers.RecordedAnswers`, or a what-if's, which serve every outside answer
from the recorded effects and refuse anything else). It runs each handler with a
:class:`~actors.context.Context` over those answers and turns its outputs into envelopes
with the runtime's own kernel (:func:`actors.invocation.envelopes`).

**Invocations.** A handler invocation's outputs share their cause (``causation_id``), their
emitter (``actor``, the handling kind), their clock (``at``) and the state they decided on
(``basis``): grouped by those four, the workflow's events fall into invocations, and the
event named by the cause is the input. For each invocation the engine folds the workflow up
to ``basis`` (for an event without one, written before v2: the state just before its first
output), runs the kind's handler on the input with a context whose clock is the recorded
``at`` and whose effects are the recorded ones (consumed in order; a request for something
else is a divergence), wraps what it returns exactly as the runtime does, and compares the
envelopes with the recorded ones field by field (``prev``, ``basis`` and ``v`` are the
log's and the writer's, and an effect's ``ms`` is a measurement: those are not compared).

**Inputs.** Events no handler produced (the intake's ``workflow_requested``, a person's
``approval_granted`` / ``approval_denied``, the runtime's ``handler_failed`` dead letters,
events of unknown emitters) are the run's inputs: reported, not re-derived. An input that a
kind handles but answered with nothing is re-run on the state that included it, and must
again emit nothing and ask nothing; if it does, it is tried once more on the state at the
end of the log (the live state cache may have been ahead), and reported if it still does.
An input dead-lettered by a kind is not re-run for that kind.

**Speed.** Invocations run in order of ``basis`` over one state folded incrementally (each
event is applied once; handlers treat the state as read-only, as they must live), events
are the decoded records as read, and a handler is driven without an event loop: a replay
context answers at once, so the handler's coroutine finishes on its first step (one that
waits for anything real is refused as a divergence).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Literal, cast

import msgspec

from cadre.actors import invocation
from cadre.actors.answers import ReplayDivergence
from cadre.actors.context import Answers, Context
from cadre.actors.replay.diff import FieldDiff, diff
from cadre.actors.runtime import ActorSpec
from cadre.bus.effects import Effect
from cadre.bus.events import EffectsRecorded, Envelope, Event, ForgedEvent, HandlerFailed
from cadre.bus.signing import Keyring, Verdict
from cadre.store.authenticity import verdict
from cadre.store.records import Record, StoredEvent
from cadre.store.state import WorkflowState, apply, skip

__all__ = [
    "AnswersFactory",
    "Divergence",
    "DivergenceKind",
    "InputNote",
    "Invocation",
    "ReplayDivergence",
    "ReplayResult",
    "envelope_json",
    "replay",
]


class Invocation(msgspec.Struct, frozen=True):
    """One handler invocation to re-run: the kind, its input, its recorded clock and effects,
    the stream sequence its state is folded to, and its recorded outputs (none when checking
    an input that the kind answered with nothing)."""

    kind: str
    input: StoredEvent
    at: datetime
    effects: tuple[Effect, ...]
    basis: int
    outputs: tuple[StoredEvent, ...] = ()


AnswersFactory = Callable[[Invocation], Answers]
"""Where each re-run invocation's answers come from (its recorded effects)."""


DivergenceKind = Literal["changed", "missing", "extra", "asked", "raised", "emitted", "orphan"]
"""``changed``: an output differs from the recorded one; ``missing``: the handler no longer
emits a recorded event; ``extra``: it emits one the record lacks; ``asked``: it asked for an
outside answer the record does not hold (or left recorded ones unasked); ``raised``: it
raised; ``emitted``: it answers an input with something where the record has nothing;
``orphan``: a recorded output whose input is not in the log, or not handled by its emitter."""


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    """Where a replay departed from the record: the recorded event concerned (its index among
    the workflow's records, stream sequence, id, type, cause and emitter), what happened, and
    the field-level differences (``expected``: recorded, ``actual``: replayed).

    ``recorded`` / ``replayed`` keep the envelopes for callers that describe the difference in
    their own terms (a what-if); :meth:`to_json` leaves them out.
    """

    index: int
    seq: int
    event_id: str
    type: str
    causation_id: str | None
    actor: str
    kind: DivergenceKind
    message: str
    diffs: tuple[FieldDiff, ...] = ()
    actual_types: tuple[str, ...] = ()
    recorded: Envelope | None = None
    replayed: tuple[Envelope, ...] = ()

    def where(self) -> str:
        cause = f", caused by {self.causation_id}" if self.causation_id else ""
        return f"index {self.index} (seq {self.seq}, {self.type}, id {self.event_id}{cause}, actor {self.actor})"

    def lines(self, max_diffs: int = 20) -> list[str]:
        """The divergence for people: where, what, then its differing fields."""
        out = [f"{self.where()}: {self.kind}: {self.message}"]
        out.extend(f"    {d.describe()}" for d in self.diffs[:max_diffs])
        if len(self.diffs) > max_diffs:
            out.append(f"    … {len(self.diffs) - max_diffs} more field(s) differ")
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        out.pop("recorded", None)
        out.pop("replayed", None)
        return out


class InputNote(msgspec.Struct, frozen=True, kw_only=True):
    """An event no handler produced (an input of the run), and what it is."""

    index: int
    seq: int
    event_id: str
    type: str
    actor: str
    note: str


class ReplayResult(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of :func:`replay` for one workflow.

    ``events``: its events (malformed messages apart, counted in ``malformed``);
    ``reproduced``: those not concerned by any divergence; ``rederived``: handler outputs
    re-derived identically; ``invocations``: handler invocations re-run; ``quiet``: inputs a
    kind answered with nothing, confirmed; ``inputs``: the events no handler produced;
    ``forged``: events the keyring does not accept (forged or unsigned), skipped as the live
    actors skipped them and not counted as reproduced.
    """

    workflow_id: str
    events: int
    reproduced: int
    rederived: int
    invocations: int
    quiet: int
    malformed: int
    forged: int = 0
    inputs: tuple[InputNote, ...]
    divergences: tuple[Divergence, ...]

    @property
    def ok(self) -> bool:
        return not self.divergences

    @property
    def first(self) -> Divergence | None:
        return self.divergences[0] if self.divergences else None

    def summary(self) -> str:
        """One line: ``N/N events reproduced`` and how, or where it first diverged."""
        head = f"{self.reproduced}/{self.events} events reproduced"
        how = f"{self.rederived} re-derived by their handlers, {len(self.inputs)} inputs"
        if self.malformed:
            how += f", {self.malformed} malformed message(s) skipped"
        if self.forged:
            how += f", {self.forged} forged or unsigned event(s) skipped"
        if self.ok:
            return f"{head} ({how})"
        first = self.divergences[0]
        return f"{head}; {len(self.divergences)} divergence(s), the first at {first.where()}"

    def lines(self) -> list[str]:
        """The result for people: the summary, the inputs, the first divergence in full, then the others."""
        out = [self.summary()]
        out.extend(f"  input #{n.index} (seq {n.seq}, {n.type}, {n.actor}): {n.note}" for n in self.inputs)
        if self.ok:
            return out
        first, *rest = self.divergences
        out.append("first divergence (expected = recorded, actual = replayed):")
        out.extend("  " + line for line in first.lines())
        if rest:
            out.append("further divergences:")
            for d in rest:
                out.extend("  " + line for line in d.lines(max_diffs=5))
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = msgspec.to_builtins(self)
        out["divergences"] = [d.to_json() for d in self.divergences]
        out["ok"] = self.ok
        out["summary"] = self.summary()
        return out


def envelope_json(env: Envelope) -> dict[str, Any]:
    """An envelope as JSON values, without what a replay does not compare: ``prev``, ``basis``,
    ``v`` and every effect's ``ms`` (on the envelope, and in an ``effects_recorded`` payload)."""
    out: dict[str, Any] = msgspec.to_builtins(env)
    for key in ("prev", "basis", "v"):
        out.pop(key, None)
    for effect in out["effects"]:
        effect.pop("ms", None)
    if type(env.data) is EffectsRecorded:
        for effect in out["data"]["effects"]:
            effect.pop("ms", None)
    return out


# -- the engine ---------------------------------------------------------------------------------


class _Job(msgspec.Struct, gc=False):
    """An invocation to re-run, and the position of its first recorded output (or its input)."""

    invocation: Invocation
    anchor: int
    positions: tuple[int, ...]  # of the recorded outputs; () for a quiet check
    basis: int  # the invocation's: jobs run in order of (basis, anchor)


class _Specs:
    """What a replay reads of its handlers, made once per sequence of specs (a :class:`Replayer`
    replays many workflows with the same one): each kind's spec, and the kinds that handle each
    event type."""

    __slots__ = ("by_kind", "kinds_of", "specs")

    def __init__(self, specs: Sequence[ActorSpec]) -> None:
        self.specs = tuple(specs)
        self.by_kind = {s.kind: s for s in self.specs}
        kinds_of: dict[str, list[str]] = {}
        for spec in self.by_kind.values():
            for t in spec.handles:
                kinds_of.setdefault(t, []).append(spec.kind)
        self.kinds_of = {t: tuple(kinds) for t, kinds in kinds_of.items()}

    def same(self, specs: Sequence[ActorSpec]) -> bool:
        """Whether ``specs`` holds the very specs these tables were made of (not copies: a spec's
        handler is a closure)."""
        mine = self.specs
        return len(specs) == len(mine) and all(a is b for a, b in zip(specs, mine, strict=True))


_SPECS: dict[int, tuple[Sequence[ActorSpec], _Specs]] = {}


def _specs_of(specs: Iterable[ActorSpec]) -> _Specs:
    """The :class:`_Specs` of ``specs``, kept by the sequence's identity (and checked spec by spec)."""
    if not isinstance(specs, list | tuple):
        return _Specs(tuple(specs))
    hit = _SPECS.get(id(specs))
    if hit is not None and hit[0] is specs and hit[1].same(specs):
        return hit[1]
    tables = _Specs(specs)
    if len(_SPECS) >= 64:
        _SPECS.clear()
    _SPECS[id(specs)] = (specs, tables)
    return tables


class _Run:
    """The state of one replay: the records, their index, and what was found."""

    def __init__(
        self,
        records: Sequence[Record],
        specs: _Specs,
        answers: AnswersFactory,
        keyring: Keyring | None = None,
    ):
        self.records = records
        self.specs = specs.by_kind
        self.kinds_of = specs.kinds_of
        self.answers = answers
        self.divergences: list[Divergence] = []
        self.inputs: list[InputNote] = []
        self.rederived = 0
        self.invocations = 0
        self.quiet = 0
        events: list[tuple[int, StoredEvent]] = []
        position: dict[str, int] = {}
        for p, r in enumerate(records):
            if type(r) is StoredEvent:
                events.append((p, r))
                position.setdefault(r.event.id, p)  # the first of equal ids wins
        self.events = events
        self.position = position
        # Events the keyring does not accept moved nothing live: they are no input, and no state.
        self.untrusted: dict[int, Verdict] = {}
        if keyring is not None:
            for p, r in events:
                v = verdict(r, keyring)
                if not v.trusted:
                    self.untrusted[p] = v

    def event(self, pos: int) -> StoredEvent:
        r = self.records[pos]
        assert isinstance(r, StoredEvent)
        return r

    def diverge(
        self,
        pos: int,
        kind: DivergenceKind,
        message: str,
        *,
        diffs: Sequence[FieldDiff] = (),
        replayed: Sequence[Envelope] = (),
    ) -> None:
        e = self.event(pos).event
        self.divergences.append(
            Divergence(
                index=pos,
                seq=self.records[pos].seq,
                event_id=e.id,
                type=e.type,
                causation_id=e.causation_id,
                actor=e.actor,
                kind=kind,
                message=message,
                diffs=tuple(diffs),
                actual_types=tuple(r.type for r in replayed),
                recorded=e,
                replayed=tuple(replayed),
            )
        )

    # -- what to re-run ------------------------------------------------------------------------

    def jobs(self) -> list[_Job]:
        """Every invocation to re-run, and the inputs noted on the way."""
        groups: dict[tuple[str, str, datetime, int], list[int]] = {}
        answered: set[tuple[str, str]] = set()
        dead: set[tuple[str | None, str]] = set()
        specs, untrusted, kinds_of = self.specs, self.untrusted, self.kinds_of
        handled: list[tuple[int, StoredEvent, tuple[str, ...]]] = []  # trusted events some kind handles
        forged_type, failed_type = ForgedEvent.TYPE, HandlerFailed.TYPE
        for pos, r in self.events:
            e = r.event
            if untrusted and pos in untrusted:
                v = untrusted[pos]
                self.note(pos, f"{v.status}, not replayed and not folded: {v.reason}")
                continue
            kinds = kinds_of.get(e.type)
            if kinds is not None:
                handled.append((pos, r, kinds))
            etype, cause, actor = e.type, e.causation_id, e.actor
            if etype == forged_type:
                dead.add((cause, actor))
                self.note(pos, f"{actor} refused its input {cause} as forged; that input is not re-run")
                continue
            if actor in specs and cause is not None and etype != failed_type:
                invocation = (cause, actor, e.at, e.basis)
                group = groups.get(invocation)
                if group is None:
                    groups[invocation] = [pos]
                    answered.add((cause, actor))
                else:
                    group.append(pos)
            elif etype == failed_type:
                dead.add((cause, actor))
                self.note(pos, _dead_letter_note(e))
            else:
                self.note(pos, _input_note(e))
        out: list[_Job] = []
        for (cause, actor, at, basis), positions in groups.items():
            job = self._group_job(cause, actor, at, basis, positions)
            if job is not None:
                out.append(job)
        for pos, r, kinds in handled:
            eid = r.event.id
            for kind in kinds:
                key = (eid, kind)
                if key not in answered and key not in dead:
                    out.append(_Job(Invocation(kind, r, r.event.at, (), r.seq), pos, (), r.seq))
        out.sort(key=_JOB_ORDER)
        return out

    def note(self, pos: int, note: str) -> None:
        r = self.event(pos)
        e = r.event
        self.inputs.append(InputNote(index=pos, seq=r.seq, event_id=e.id, type=e.type, actor=e.actor, note=note))

    def _group_job(self, cause: str, actor: str, at: datetime, basis: int, positions: list[int]) -> _Job | None:
        cause_pos = self.position.get(cause)
        if cause_pos is None:
            for pos in positions:
                self.diverge(pos, "orphan", f"caused by event {cause}, which is not in this workflow's log")
            return None
        inp = self.event(cause_pos)
        if inp.event.type not in self.specs[actor].handles:
            for pos in positions:
                self.diverge(pos, "orphan", f"emitted by {actor}, which does not handle {inp.event.type} (its cause)")
            return None
        records = self.records
        outputs = cast("tuple[StoredEvent, ...]", tuple([records[p] for p in positions]))  # of self.events
        first = outputs[0].event
        effects = first.data.effects if type(first.data) is EffectsRecorded else first.effects
        if basis <= 0:  # written before v2: the state just before the first output
            basis = records[positions[0] - 1].seq if positions[0] > 0 else 0
        return _Job(Invocation(actor, inp, at, effects, basis, outputs), positions[0], tuple(positions), basis)

    # -- re-running ------------------------------------------------------------------------------

    def invoke(self, inv: Invocation, state: WorkflowState) -> list[Envelope]:
        """Run the handler as the runtime does; raise what the handler or its context raised."""
        inp, kind, at = inv.input, inv.kind, inv.at
        ctx = Context(kind=kind, stored=inp, now=at, answers=self.answers(inv))
        steps = self.specs[kind].handler(ctx, inp, state).__await__()
        # A replay context answers at once, so the handler finishes on its first step; one that
        # waits for anything is refused.
        try:
            steps.send(None)
        except StopIteration as done:
            result = done.value
        else:
            steps.close()
            raise ReplayDivergence(_WAITED)
        payloads: list[Event] = result if type(result) is list else []
        return invocation.envelopes(kind, inp.event, payloads, tuple(ctx.effects), at, inv.basis)

    def check_group(self, job: _Job, state: WorkflowState) -> None:
        self.invocations += 1
        inv = job.invocation
        try:
            replayed = self.invoke(inv, state)
        except ReplayDivergence as exc:
            self.diverge(job.anchor, "asked", exc.message)
            return
        except Exception as exc:
            self.diverge(job.anchor, "raised", f"the handler raised {type(exc).__name__}: {exc}")
            return
        recorded = inv.outputs
        n = len(replayed)
        if len(recorded) == n:  # the usual case: each output the same as the recorded one
            for rec, actual in zip(recorded, replayed, strict=True):
                if not _same(rec.event, actual):
                    break
            else:
                self.rederived += n
                return
        for i, rec in enumerate(recorded):
            pos = job.positions[i]
            if i >= n:
                what = ", ".join(e.type for e in replayed) or "nothing"
                self.diverge(
                    pos,
                    "missing",
                    f"{inv.kind} no longer emits this event in answer to {inv.input.event.type} (it emits {what})",
                    diffs=[FieldDiff(path="$", expected=envelope_json(rec.event))],
                    replayed=replayed,
                )
                continue
            actual = replayed[i]
            if _same(rec.event, actual):
                self.rederived += 1
                continue
            diffs = diff(envelope_json(rec.event), envelope_json(actual))
            if not diffs:  # equal as JSON (a tuple against a list): the same event
                self.rederived += 1
                continue
            self.diverge(pos, "changed", _changed(rec.event, actual, diffs), diffs=diffs, replayed=replayed)
        for actual in replayed[len(recorded) :]:
            later = self.position.get(actual.id)
            if later is not None:
                stored = self.event(later).event
                if stored.causation_id == actual.causation_id and stored.actor == actual.actor:
                    continue  # stored by a later delivery of the same input (after a crash between outputs)
            self.diverge(
                job.positions[-1],
                "extra",
                f"{inv.kind} now also emits {actual.type} (id {actual.id}) in answer to {inv.input.event.type}, "
                "which the record does not hold",
                diffs=[FieldDiff(path="$", actual=envelope_json(actual))],
                replayed=replayed,
            )

    def check_quiet(self, job: _Job, state: WorkflowState) -> tuple[str | None, list[Envelope]]:
        """(None, []) when the handler again answers with nothing; else what it does instead."""
        inv = job.invocation
        try:
            replayed = self.invoke(inv, state)
        except ReplayDivergence as exc:
            return f"it now asks for an outside answer: {exc.message}", []
        except Exception as exc:
            return f"the handler raised {type(exc).__name__}: {exc}", []
        if not replayed:
            return None, []
        return "it now emits " + ", ".join(e.type for e in replayed), replayed

    def run(self) -> None:
        jobs = self.jobs()
        state = WorkflowState(workflow_id=_workflow_id(self.records))
        records, n, pos = self.records, len(self.records), 0
        untrusted = self.untrusted
        retry: list[_Job] = []
        for job in jobs:
            basis = job.basis
            while pos < n and (r := records[pos]).seq <= basis:  # fold up to the state it decided on
                if isinstance(r, StoredEvent) and pos not in untrusted:
                    apply(state, r)
                else:
                    skip(state, r)
                pos += 1
            if job.positions:
                self.check_group(job, state)
            elif self.check_quiet(job, state)[0] is None:
                self.quiet += 1
            else:
                retry.append(job)
        last = records[-1].seq if records else 0
        while pos < n and (r := records[pos]).seq <= last:  # to the end of the log
            if isinstance(r, StoredEvent) and pos not in untrusted:
                apply(state, r)
            else:
                skip(state, r)
            pos += 1
        for job in retry:  # the live state cache may have been ahead of the input: the latest state
            why, replayed = self.check_quiet(job, state)
            if why is None:
                self.quiet += 1
                continue
            self.diverge(
                job.anchor,
                "emitted",
                f"{job.invocation.kind} answered this {job.invocation.input.event.type} with nothing, "
                f"but on the state it saw (and on the latest one) {why}",
                replayed=replayed,
            )


_JOB_ORDER = operator.attrgetter("basis", "anchor")


def replay(
    records: Sequence[Record],
    specs: Iterable[ActorSpec],
    *,
    answers: AnswersFactory,
    keyring: Keyring | None = None,
) -> ReplayResult:
    """Re-run every handler invocation of one workflow's ``records`` (in stored order, as read)
    and compare its outputs with the recorded ones (module docstring). With ``keyring``, events
    it does not accept are skipped as the live actors skipped them (and counted as ``forged``)."""
    run = _Run(records, _specs_of(specs), answers, keyring)
    run.run()
    divergences = sorted(run.divergences, key=lambda d: d.index)
    events = len(run.events)
    return ReplayResult(
        workflow_id=_workflow_id(records),
        events=events,
        reproduced=events - len({d.index for d in divergences} | set(run.untrusted)),
        rederived=run.rederived,
        invocations=run.invocations,
        quiet=run.quiet,
        malformed=len(records) - events,
        forged=len(run.untrusted),
        inputs=tuple(sorted(run.inputs, key=lambda n: n.index)),
        divergences=tuple(divergences),
    )


# -- helpers -------------------------------------------------------------------------------------


_WAITED = (
    "the handler waited for something outside its replay context (a live call, a sleep); "
    "under replay every outside answer comes from the record"
)


def _same(recorded: Envelope, replayed: Envelope) -> bool:
    """Equal in every compared field (a fast check; :func:`diff` of the JSON forms decides the rest)."""
    return (
        recorded.id == replayed.id
        and recorded.type == replayed.type
        and recorded.causation_id == replayed.causation_id
        and recorded.actor == replayed.actor
        and recorded.workflow_id == replayed.workflow_id
        and recorded.at == replayed.at
        and recorded.data == replayed.data
        and recorded.effects == replayed.effects
    )


def _changed(recorded: Envelope, replayed: Envelope, diffs: Sequence[FieldDiff]) -> str:
    if recorded.type != replayed.type:
        return f"{recorded.actor} now emits {replayed.type} where the record has {recorded.type}"
    fields = sorted({d.path.split(".")[1].split("[")[0] if "." in d.path else d.path for d in diffs})
    return f"{recorded.actor}'s {recorded.type} differs in {', '.join(fields)} ({len(diffs)} field(s))"


def _input_note(e: Envelope) -> str:
    if e.actor == "intake":
        return "the request, as the intake recorded it"
    if e.actor == "human":
        return f"a person's decision ({e.type})"
    return f"emitted by {e.actor}, which is not a handler kind replayed here"


def _dead_letter_note(e: Envelope) -> str:
    data = e.data
    assert isinstance(data, HandlerFailed)
    return (
        f"dead letter: {e.actor} gave up on {data.input_type} (seq {data.input_seq}) after {data.attempts} "
        f"attempt(s) ({data.error.code}); that input is not re-run for {e.actor}"
    )


def _workflow_id(records: Sequence[Record]) -> str:
    for r in records:
        if isinstance(r, StoredEvent):
            return r.event.workflow_id
    return ""
