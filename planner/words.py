"""The words of a request as the plan library reads them: one tokenizer for matching and binding.

Lowercase, split on anything not a letter or digit, the number words one..ten mapped to
digits ("three" -> "3"), a short list of stop words dropped, and light stemming (plural
"s"/"ies", "ing", "ed", a final "e"; "customers" -> "customer", "writing" and "write" -> "writ").
"""

from __future__ import annotations

import re

__all__ = ["NUMBER_WORDS", "STOP_WORDS", "tokens"]

# Words that say little about what a request wants (kept short: "top", "most", "all", "not", "than" do matter).
_STOP_TEXT = """
a an the of in on at to for from by with and or as is are was were be been it its this that
these those i me my we our you your please what which who whom whose how do does did can could
would should will s t into about then there their them they
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
