"""cadre's nats-py client: its header parse gives what nats-py's gives, for any header block."""

from __future__ import annotations

import nats.errors
from hypothesis import example, given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from nats.aio.client import Client as NatsPyClient
from nats.aio.msg import Msg

from cadre.bus import ConnectOptions, connect
from cadre.bus.nats_client import Client, header_block, parse_header_lines
from tests.conftest import unique

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


async def _written(client: NatsPyClient, subject: str, headers: dict[str, str] | None) -> bytes | Exception:
    """The command ``client._send_publish`` hands to the connection (or the error it raises)."""
    sent: list[bytes] = []

    async def capture(cmd: bytes, priority: bool = False) -> None:
        sent.append(bytes(cmd))

    client._send_command = capture  # type: ignore[method-assign]
    try:
        await client._send_publish(subject, "_INBOX.x.1", b"payload", 7, headers)
    except Exception as exc:  # the same error is part of the same behaviour
        return exc
    assert len(sent) == 1
    return sent[0]


_key = st.one_of(
    st.sampled_from(["Nats-Msg-Id", "Cadre-Sig", " Padded ", "", " ", "bad key", "bad:key", "é", "t!#$%&'*+-.^_`|~9"]),
    st.text(max_size=6),
)
_value = st.one_of(
    st.sampled_from(["", " v ", "a\r\nb", "\n", "x\ry", "p\nq", "\u2028", "é", "a" * 86]),
    st.text(max_size=12),
)


@given(st.one_of(st.none(), st.dictionaries(_key, _value, max_size=6)))
@example({"Nats-Msg-Id": "01J", "Cadre-Sig": "a\r\nb", " Spaced ": " v "})
@example({"": "skipped", "ok": "kept"})
@example({"bad key": "x"})
async def test_header_writing_equals_nats_py(headers: dict[str, str] | None) -> None:
    ours = await _written(Client(), "cadre.evt.wf.step_completed", headers)
    theirs = await _written(NatsPyClient(), "cadre.evt.wf.step_completed", headers)
    if isinstance(theirs, Exception):
        assert (type(ours), ours.args if isinstance(ours, Exception) else None) == (type(theirs), theirs.args)
    else:
        assert ours == theirs
    again = await _written(Client(), "cadre.evt.wf.step_completed", headers)  # from the remembered keys
    assert type(again) is type(ours)
    if not isinstance(ours, Exception):
        assert again == ours
    assert header_block({"K": "v"}) == b"NATS/1.0\r\nK: v\r\n\r\n"


async def test_a_flush_returns_after_the_server_has_what_was_written_before_it(nc: NATS, nats_url: str) -> None:
    """nats-py 2.16 writes flush's PING ahead of the pending SUB; cadre's client writes it behind."""
    written: list[bytes] = []
    transport = nc._transport
    assert transport is not None
    write, writelines = transport.write, transport.writelines

    def record(data: bytes) -> None:
        written.append(bytes(data))
        write(data)

    def record_lines(lines: list[bytes]) -> None:
        written.extend(bytes(line) for line in lines)
        writelines(lines)

    subject = unique("barrier")
    transport.write, transport.writelines = record, record_lines  # type: ignore[method-assign]
    try:
        await nc.subscribe(subject)
        await nc.flush()
    finally:
        transport.write, transport.writelines = write, writelines  # type: ignore[method-assign]
    order = [line.split(b" ")[0].strip() for line in written]
    assert order.index(b"SUB") < order.index(b"PING"), order

    # And what it is for: another connection's request finds the subscriber, every time.
    other = await connect(ConnectOptions(url=nats_url, name="barrier-other"))
    try:
        missed = 0
        for i in range(150):

            async def answer(m: Msg) -> None:
                await nc.publish(m.reply, b"ok")

            sub = await nc.subscribe(f"{subject}.{i}", cb=answer)
            await nc.flush()
            try:
                await other.request(f"{subject}.{i}", b"", timeout=2)
            except nats.errors.NoRespondersError:
                missed += 1
            await sub.unsubscribe()
        assert missed == 0
    finally:
        await other.close()
