"""cadre's nats-py client: the same client, with cheaper headers (parsed and written) and a direct
path for the replies of the event log's appends.

:func:`cadre.bus.connection.connect` builds every connection of cadre as a :class:`Client`, so
two costs that nats-py 2.16 pays on every message received are cut (``docs/benchmarks.md``,
"Appends and header parsing, round 8"):

* **Header parsing.** ``Client._parse_header_lines`` checks each header name for whitespace
  with a per-character generator (``any(c.isspace() for c in key)``): about 4.5 us for a cadre
  event's five headers, on every delivery of every process. :func:`parse_header_lines` gives
  exactly the same dict (``tests/test_nats_client.py`` checks it against nats-py's own function
  on arbitrary header blocks with hypothesis) in about 1.7 us: a header name is checked once
  with one regular expression (whitespace as ``str.isspace`` sees it, or a non-ASCII byte) and
  its verdict is remembered for the next message (a few hundred names at most).
* **Header writing.** ``Client._send_publish`` runs ``str.translate`` (a Python-level mapping)
  over every header value to turn CR/LF into spaces, and checks every key with a regular
  expression: about 12 us for an append's five headers. :func:`header_block` writes the same
  bytes (checked against nats-py's on arbitrary headers) in about 2.6 us.
* **Append replies.** A reply to the mux of :mod:`cadre.bus.pubacks` goes straight to the mux
  (its future is resolved in place), without the ``Msg``, the subscription's queue and the task
  that nats-py's callbacks go through. Every other message takes nats-py's path unchanged.

* **Flush is a barrier.** nats-py 2.16's ``_send_ping`` writes its PING straight to the socket,
  ahead of the commands still waiting in the pending buffer for the flusher task: a
  ``subscribe`` then ``flush`` could see its PONG before the server had the SUB, and a request
  from another connection then found no responder (15 times in 2 000 here). :class:`Client`
  queues the PING behind them while connected, so a flush returns only once the server has
  everything written before it, as NATS documents for every client.

Anything else is nats-py's: connecting, reconnecting (which subscribes the mux again with every
other subscription), JetStream.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING, Any

from nats import errors
from nats.aio.client import _HEADER_KEY_RE, _HEADER_VALUE_NEWLINES, PING_PROTO
from nats.aio.client import Client as NATSClient
from nats.protocol import command as prot_command

if TYPE_CHECKING:
    from cadre.bus.pubacks import ReplyMux

# A header name nats-py drops: whitespace inside it (str.isspace on ASCII: \t \n \v \f \r, the
# separators \x1c-\x1f and the space) or a byte that is not ASCII (nats-py's ascii decode fails).
_BAD_NAME = re.compile(rb"[\t-\r\x1c- \x80-\xff]")
_NAMES_KEPT = 512
_DROPPED = "\n"  # never a key nats-py makes (it has whitespace)
# A header name as it is on the wire -> the key nats-py makes of it, or _DROPPED when it skips the line.
_names: dict[bytes, str] = {}


def _key(name: bytes) -> str:
    stripped = name.strip()
    key = stripped.decode("ascii") if _BAD_NAME.search(stripped) is None else _DROPPED
    if len(_names) < _NAMES_KEPT:
        _names[name] = key
    return key


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py 2.16's ``Client._parse_header_lines``, the same result for every input, cheaper.

    Lines are split on CRLF; a line without ``:`` is skipped; the name is the stripped bytes
    before the first ``:``, skipped when it holds whitespace or a non-ASCII byte; the value is
    the stripped rest, decoded as UTF-8 with replacement; a later line wins over an earlier one.
    """
    out: dict[str, str] = {}
    names = _names
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = names.get(name)
        if key is None:
            key = _key(name)
        if key is _DROPPED:
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


_KEYS_KEPT = 512
# A header key as given to publish -> its bytes on the wire with ": " (b"" when nats-py skips it: empty).
_keys: dict[str, bytes] = {}


def header_block(headers: dict[str, Any]) -> bytes:
    """The header block nats-py 2.16's ``Client._send_publish`` writes for ``headers``, byte for byte.

    Each key is stripped, skipped when empty, refused (``BadHeaderError``) when it is not an HTTP
    token; each value is stripped and its CR/LF become spaces. nats-py spends most of its time in
    ``str.translate`` over every value (a signature is 86 characters); here a value is translated
    only when it holds a CR or LF, and a key is checked once.
    """
    parts = [b"NATS/1.0\r\n"]
    for k, v in headers.items():
        key = _keys.get(k)
        if key is None:
            stripped = k.strip()
            if not stripped:
                key = b""
            elif _HEADER_KEY_RE.fullmatch(stripped) is None:
                raise errors.BadHeaderError(stripped)
            else:
                key = stripped.encode() + b": "
            if len(_keys) < _KEYS_KEPT:
                _keys[k] = key
        if not key:
            continue
        value = v.strip()
        if "\r" in value or "\n" in value:
            value = value.translate(_HEADER_VALUE_NEWLINES)
        parts += (key, value.encode(), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Client(NATSClient):
    """nats-py's client with :func:`parse_header_lines` and the append replies' direct path."""

    def __init__(self) -> None:
        super().__init__()
        self.reply_mux: ReplyMux | None = None  # set by cadre.bus.pubacks.mux_for
        self.reply_sid = -1  # the mux's subscription id (-1: none)

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        return parse_header_lines(raw)

    async def _send_publish(
        self, subject: str, reply: str, payload: bytes, payload_size: int, headers: dict[str, Any] | None
    ) -> None:
        if headers is None or subject == "":
            await super()._send_publish(subject, reply, payload, payload_size, headers)
            return
        # nats-py's _send_publish with headers, its header block built by header_block (the same bytes).
        pub_cmd = prot_command.hpub_cmd(subject, reply, header_block(headers), payload)
        self.stats["out_msgs"] += 1
        self.stats["out_bytes"] += payload_size
        await self._send_command(pub_cmd)
        if self._flush_queue is not None and self._flush_queue.empty():
            await self._flush_pending()

    async def _send_ping(self, future: asyncio.Future[Any] | None = None) -> None:
        if not self.is_connected or self._flusher_task is None or self._flusher_task.done():
            await super()._send_ping(future)  # nats-py's: nothing is ordered while it reconnects
            return
        # Behind every command already pending, so its PONG proves the server has them.
        self._pongs.append(future if future is not None else asyncio.get_running_loop().create_future())
        await self._send_command(PING_PROTO)
        await self._flush_pending()

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        if sid == self.reply_sid and self.reply_mux is not None and sid in self._subs:
            self.stats["in_msgs"] += 1
            self.stats["in_bytes"] += len(data)
            if headers:  # None (nats-py's parser passes None for a message without headers) or bytes
                # A status reply ("no responders" is NATS/1.0 503), or headers on an ack: parsed as nats-py does.
                self.reply_mux.deliver(subject, data, await self._process_headers(headers))
            else:
                self.reply_mux.deliver(subject, data, None)
            return
        await super()._process_msg(sid, subject, reply, data, headers)
