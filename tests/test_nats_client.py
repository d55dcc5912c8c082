"""cadre's nats-py client: its header parse gives what nats-py's gives, for any header block."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Client as NatsPyClient

from cadre.bus.nats_client import Client, parse_header_lines

# Bytes that matter to the parse: separators, every ASCII whitespace str.isspace knows (\x1c-\x1f
# too), bytes that bytes.strip removes, non-ASCII (a valid UTF-8 letter and invalid bytes).
_SPECIAL = [b"\r\n", b"\r", b"\n", b":", b": ", b" ", b"\t", b"\x0b", b"\x0c", b"\x1c", b"\x1f", b"\x00", b"\x7f"]
_SPECIAL += [b"\xc3\xa9", b"\xff", b"\x80", b"\xe2\x80\x83", b"\xc2\x85", b"\xc2\xa0"]
_piece = st.one_of(
    st.sampled_from(_SPECIAL),
    st.sampled_from([b"Nats-Msg-Id", b"Cadre-Sig", b"a", b"X", b"-", b"_", b"k1", b"01JABC"]),
    st.binary(max_size=6),
    st.text(max_size=4).map(lambda t: t.encode()),
)
_line = st.lists(_piece, max_size=8).map(b"".join)
_block = st.lists(_line, max_size=8).map(b"\r\n".join)
_cadre_like = st.lists(
    st.tuples(
        st.sampled_from(
            [b"Nats-Msg-Id", b"Cadre-Sig", b"Cadre-Key", b" Spaced ", b"In side", b"", b"\xc3\xa9t\xc3\xa9"]
        ),
        st.sampled_from([b": ", b":", b":\t", b" : ", b""]),
        st.binary(max_size=12),
    ).map(b"".join),
    max_size=6,
).map(lambda lines: b"\r\n".join(lines) + b"\r\n\r\n")


@given(st.one_of(_block, _cadre_like, st.binary(max_size=64)))
@example(b"Nats-Msg-Id: 01J\r\nCadre-Sig: abc\r\n\r\n")
@example(b": empty name\r\n")  # nats-py keeps an empty name
@example(b"\x1cname: v\r\n")  # \x1c is whitespace to str.isspace, not to bytes.strip: dropped
@example(b"na me: v\r\nname: first\r\nname: second\r\n")  # whitespace inside: dropped; later wins
@example(b"\xc3\xa9: v\r\nok: \xff\xfe\r\n")  # non-ASCII name dropped; invalid UTF-8 value replaced
@example(b"k:v:w\r\nno colon\r\n\r\n  k2  :  v2  \r\n")
def test_header_parse_equals_nats_py(raw: bytes) -> None:
    expected = NatsPyClient._parse_header_lines(raw)
    assert parse_header_lines(raw) == expected
    assert list(parse_header_lines(raw)) == list(expected)  # the same order too
    assert parse_header_lines(raw) == expected  # the second time, from the remembered names


def test_the_client_uses_it() -> None:
    raw = b"Nats-Msg-Id: x\r\n\x1cbad: y\r\n"
    assert Client._parse_header_lines(raw) == NatsPyClient._parse_header_lines(raw) == {"Nats-Msg-Id": "x"}
