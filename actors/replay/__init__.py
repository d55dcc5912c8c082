"""Deterministic replay and what-if, beside the runtime they re-run.

* :mod:`actors.replay.engine`: re-run every handler invocation of one workflow on its
  recorded answers and compare what it emits with the record (:func:`replay`);
* :mod:`actors.replay.diff`: the field-level differences of two JSON values;
* :mod:`actors.replay.whatif`: a what-if's changes, its answers, and the differences as decisions;
* :mod:`actors.replay.replayer`: the engine run with the live actors (:class:`Replayer`).

The answers a replay serves (:class:`~actors.answers.RecordedAnswers`) sit beside the live
ones in :mod:`actors.answers`; the kernel that turns an invocation into stored envelopes,
shared with the runtime, is :mod:`actors.invocation`.
"""

from __future__ import annotations

from cadre.actors.answers import LiveCallRefused, RecordedAnswers, RecordOnlyProvider, ReplayDivergence
from cadre.actors.replay.diff import FieldDiff, diff
from cadre.actors.replay.engine import Divergence, InputNote, Invocation, ReplayResult, envelope_json, replay
from cadre.actors.replay.replayer import Replayer, WhatIfResult
from cadre.actors.replay.whatif import Change, Unrecorded, WhatIf, WhatIfAnswers, redecide
from cadre.actors.specs import live_specs

__all__ = [
    "Change",
    "Divergence",
    "FieldDiff",
    "InputNote",
    "Invocation",
    "LiveCallRefused",
    "RecordOnlyProvider",
    "RecordedAnswers",
    "ReplayDivergence",
    "ReplayResult",
    "Replayer",
    "Unrecorded",
    "WhatIf",
    "WhatIfAnswers",
    "WhatIfResult",
    "diff",
    "envelope_json",
    "live_specs",
    "redecide",
    "replay",
]
