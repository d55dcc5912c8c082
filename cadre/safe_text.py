"""Recorded text made safe to print: what a terminal would obey is shown, never sent.

Any text in a workflow's record (a request, a plan's descriptions, a model's answer, a
tool's output, a forged event's fields) may hold characters a terminal acts on: ``ESC [ 2J``
clears the screen, ``ESC ] 0;… BEL`` sets the window title, ``CR`` rewrites the line, the C1
controls U+0080 to U+009F act as ``ESC`` sequences on some terminals, U+202E reverses the text
after it, and a zero-width character hides a difference. Every CLI printer of recorded text
passes it through :func:`visible` (or :func:`visible_lines`, or :func:`json_text` for
``--json``), so an auditor's screen shows ``\\x1b[2J`` rather than obeying it.

The rule is Python's: a character that is not :meth:`str.isprintable` (Unicode "Other" and
"Separator" categories: controls, format characters such as the bidi overrides, surrogates,
unassigned and private-use code points, separators other than the space) is shown as the
escape ``repr`` would use (``\\n``, ``\\x1b``, ``\\u202e``, ``\\U000e0041``). Backslashes are
left alone, so an escape is readable but not told apart from the same characters typed in;
``--json`` gives the exact text.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def visible(text: str, *, newlines: bool = False) -> str:
    """``text`` with every character a terminal could obey shown as its escape.

    One field, one line: a line break is escaped too (``\\n``), so a value cannot start a line
    of its own that looks like the printer's. ``newlines=True`` keeps line breaks, for a block
    that is meant to span lines.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or (newlines and c == "\n") else _escape(c) for c in text)


def visible_lines(lines: Iterable[str]) -> str:
    """Lines for the terminal, each one :func:`visible` (its own line breaks escaped), joined by ``\\n``."""
    return "\n".join(visible(line) for line in lines)


_JSON_UNSAFE = re.compile(r"[^\x20-\x7e]")


def _json_escape(m: re.Match[str]) -> str:
    c = m.group()
    if c.isprintable():
        return c
    n = ord(c)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000  # outside the BMP: a UTF-16 surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def json_text(encoded: str) -> str:
    """Compact JSON text with its non-printable characters as ``\\uXXXX`` escapes.

    JSON encoders escape U+0000 to U+001F but leave DEL, the C1 controls and the bidi overrides
    raw. Outside string literals compact JSON holds only printable ASCII, so every such
    character is inside a string, where the escape means the same character: the value read
    back is unchanged.
    """
    if encoded.isascii() and encoded.isprintable():
        return encoded
    return _JSON_UNSAFE.sub(_json_escape, encoded)


class VisibleFormatter(logging.Formatter):
    """A log formatter whose records are :func:`visible` (line breaks kept, for tracebacks):
    a log line quoting a recorded value cannot send an escape sequence either."""

    def format(self, record: logging.LogRecord) -> str:
        return visible(super().format(record), newlines=True)
