"""The validator's memo of its pure checks (``actors.validator.Memo``): a verdict asked again is the
one first given, so a replayer (or a live validator) that has seen a workflow gives it the same
events the second time; the memo keeps nothing too big and starts over when full."""

from __future__ import annotations

import pytest

from cadre.actors.validator import Memo
from cadre.replay_cli import replayer_for
from tests.test_replay import MANIFEST, golden


def test_a_memo_makes_each_verdict_once_and_keeps_its_bounds() -> None:
    made: list[bytes] = []
    memo: Memo[tuple[str, ...]] = Memo(size=2, max_key=4)

    def make(key: bytes) -> tuple[str, ...]:
        made.append(key)
        return (key.decode(),)

    assert memo.get(b"a", lambda: make(b"a")) == ("a",)
    assert memo.get(b"a", lambda: make(b"a")) == ("a",)
    assert made == [b"a"]
    assert memo.get(b"toolong", lambda: make(b"toolong")) == ("toolong",)
    assert memo.get(b"toolong", lambda: make(b"toolong")) == ("toolong",)
    assert made == [b"a", b"toolong", b"toolong"]  # a key over max_key is not kept
    memo.get(b"b", lambda: make(b"b"))
    memo.get(b"c", lambda: make(b"c"))  # full: starts over
    assert set(memo.found) == {b"c"}
    assert Memo(size=2, max_key=4) == memo != Memo()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_a_golden_log_replays_the_same_twice_with_one_replayer(name: str) -> None:
    """The second replay answers every plan and step check from the memo: same outcome, every event."""
    settings, records = golden(name)
    replayer = replayer_for(settings)
    first, second = replayer.replay(records), replayer.replay(records)
    assert first.ok, first.lines()
    assert second.ok, second.lines()
    assert first == second
