"""cadre/safe_text.py: what a terminal would obey is shown as an escape; JSON stays the same value."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cadre.render import json_line
from cadre.safe_text import VisibleFormatter, json_text, visible, visible_lines


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain text, ünïcode, 漢字, emoji 🎉", "plain text, ünïcode, 漢字, emoji 🎉"),
        ("\x1b[2J\x1b]0;pwned\x07", "\\x1b[2J\\x1b]0;pwned\\x07"),  # clear screen, set the window title
        ("ok\rFAKE", "ok\\rFAKE"),  # carriage return: rewrite the line
        ("a\nb\tc", "a\\nb\\tc"),
        ("\x9b31m\x85\x7f", "\\x9b31m\\x85\\x7f"),  # C1 CSI, NEL, DEL
        ("abc\u202edef\u2066\u200b\ufeff", "abc\\u202edef\\u2066\\u200b\\ufeff"),  # bidi, zero width
        ("line\u2028sep", "line\\u2028sep"),
        ("tag\U000e0041", "tag\\U000e0041"),  # Unicode tag characters: invisible text
    ],
)
def test_visible_escapes_what_a_terminal_obeys(text: str, shown: str) -> None:
    assert visible(text) == shown
    assert visible(shown) == shown  # escaping twice changes nothing


def test_a_block_keeps_its_line_breaks_and_lines_escape_theirs() -> None:
    assert visible("one\ntwo\x1b[K", newlines=True) == "one\ntwo\\x1b[K"
    assert visible_lines(["first", "second\nnot a line\x07"]) == "first\nsecond\\nnot a line\\x07"


@pytest.mark.parametrize("value", ["\x1b[2J\x07", "\x7f\x85\x9b", "a\u202eb\u200b", "\U000e0041\U0001f389", "ü"])
def test_json_text_is_the_same_json_value_with_no_raw_control(value: str) -> None:
    line = json_line({"v": value, "n": [1, value]})
    assert json.loads(line) == {"v": value, "n": [1, value]}
    assert line.isascii() or all(c.isprintable() for c in line)
    assert not any(c in line for c in "\x1b\x07\x7f\x85\x9b\u202e\u200b\U000e0041")


def test_json_text_leaves_printable_text_alone() -> None:
    assert json_text('{"a":"ü 🎉"}') == '{"a":"ü 🎉"}'
    assert json_text('{"a":"\u202e"}') == '{"a":"\\u202e"}'
    assert json_text('{"a":"\U000e0041"}') == '{"a":"\\udb40\\udc41"}'


def test_log_records_are_visible_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(VisibleFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.safe_text")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("handler failed on %s", "\x1b]0;pwned\x07")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == "WARNING handler failed on \\x1b]0;pwned\\x07\n"
