"""Subject names of cadre, under a configurable prefix (default ``cadre``).

    <prefix>.requests                      requests from any NATS client (request/reply or publish only;
                                           stored by the requests stream, answered by the intake)
    <prefix>.plan                          previews of a request's flow and path, running nothing (request/reply)
    <prefix>.intake.settled                an intake took a stored request (core NATS, between intakes)
    <prefix>.budget.consult                consultations to the budget actor (core NATS, request/reply)
    <prefix>.budget.settle                 settlements of granted consultations (core NATS, request/reply)
    <prefix>.ledger                        the budget's ledger (JetStream, its own stream)
    <prefix>.ping                          liveness: every cadre process answers with what it runs
    <prefix>.evt.<workflow_id>.<type>      every event of a workflow (JetStream, the event log)

A workflow id and an event type are single subject tokens: letters, digits, ``_`` and ``-``.

With partitions (``CADRE_PARTITIONS``), the event stream stores each event under its subject plus
the workflow's partition, ``<prefix>.evt.<workflow_id>.<type>.<partition>``: the stream's own
subject transform adds it (:func:`partition_transform`); publishers still publish the subject
above, and readers take either form (:meth:`Subjects.parse_event`, :meth:`Subjects.published`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cadre.bus.errors import InvalidName

_PARTITION = re.compile(r"[0-9]{1,4}")
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_PREFIX = re.compile(r"[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}")


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it can stand as one subject token, else raise :class:`InvalidName`."""
    if not _TOKEN.fullmatch(value):
        raise InvalidName(
            f"{kind} {value!r} is not a valid subject token: expected 1-128 characters "
            "from A-Z a-z 0-9 _ - (no dots, spaces or wildcards)"
        )
    return value


@dataclass(frozen=True, slots=True)
class Subjects:
    """Subject names for one deployment; every process of a deployment uses the same prefix."""

    prefix: str = "cadre"

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise InvalidName(
                f"subject prefix {self.prefix!r} is not valid: expected dot-separated tokens of "
                "A-Z a-z 0-9 _ - (for example 'cadre' or 'acme.cadre')"
            )

    @property
    def requests(self) -> str:
        return f"{self.prefix}.requests"

    @property
    def plan(self) -> str:
        """Previews of the flow and path a request would take, running nothing (request/reply; the
        planner's process answers: ``cadre plan``, :mod:`cadre.flows_cli`)."""
        return f"{self.prefix}.plan"

    @property
    def intake_settled(self) -> str:
        """Where an intake says a stored request was taken (core NATS; every intake replica listens)."""
        return f"{self.prefix}.intake.settled"

    @property
    def budget(self) -> str:
        """Consultations to the budget actor (core NATS request/reply, queue group)."""
        return f"{self.prefix}.budget.consult"

    @property
    def budget_settle(self) -> str:
        """Settlements of granted consultations (core NATS request/reply, queue group)."""
        return f"{self.prefix}.budget.settle"

    @property
    def ledger(self) -> str:
        """The budget's ledger: one subject, so one expected sequence orders every entry."""
        return f"{self.prefix}.ledger"

    @property
    def approvals(self) -> str:
        """Where approvers send signed decisions (request/reply, the approvals service answers)."""
        return f"{self.prefix}.approvals"

    @property
    def ping(self) -> str:
        """Every cadre process answers here with what it runs (``cadre status``)."""
        return f"{self.prefix}.ping"

    @property
    def events(self) -> str:
        """Every event of every workflow: the stream's subject filter."""
        return f"{self.prefix}.evt.>"

    def event(self, workflow_id: str, event_type: str) -> str:
        """The subject one event is stored under."""
        return f"{self.prefix}.evt.{check_token('workflow id', workflow_id)}.{event_type}"

    def workflow(self, workflow_id: str) -> str:
        """Every event of one workflow (a wildcard filter)."""
        return f"{self.prefix}.evt.{check_token('workflow id', workflow_id)}.>"

    def of_type(self, event_type: str) -> str:
        """Events of one type across all workflows (an actor's consumer filter)."""
        return f"{self.prefix}.evt.*.{check_token('event type', event_type)}"

    def of_type_in(self, event_type: str, partition: int) -> str:
        """Events of one type stored under one partition (a partition consumer's filter)."""
        return f"{self.of_type(event_type)}.{partition}"

    def stored_of_type(self, event_type: str) -> tuple[str, str]:
        """The filters of one type's events as stored: without and with a partition token (a stream
        that got its partitions later holds both; an unpartitioned one never the second)."""
        of_type = self.of_type(event_type)
        return of_type, f"{of_type}.*"

    def stored_event(self, workflow_id: str, event_type: str) -> tuple[str, str]:
        """The subjects one workflow's events of a type are stored under: without and with a partition."""
        event = self.event(workflow_id, event_type)
        return event, f"{event}.*"

    def parse_event(self, subject: str) -> tuple[str, str] | None:
        """``(workflow_id, event_type)`` of an event subject, or None when it is not one.

        A stored subject may end in the workflow's partition (digits), which the stream added."""
        head = f"{self.prefix}.evt."
        if not subject.startswith(head):
            return None
        rest = subject[len(head) :].split(".")
        if len(rest) == 3 and _PARTITION.fullmatch(rest[2]):
            rest.pop()
        if len(rest) != 2 or not all(rest):
            return None
        return rest[0], rest[1]

    def parse_stored(self, subject: str) -> tuple[str, str, str] | None:
        """``(workflow_id, event_type, published subject)`` of a stored event subject, or None when it
        is not one: the published subject is the stored one without its partition token."""
        parsed = self.parse_event(subject)
        if parsed is None:
            return None
        workflow_id, event_type = parsed
        return workflow_id, event_type, f"{self.prefix}.evt.{workflow_id}.{event_type}"

    def published(self, subject: str) -> str:
        """The subject an event was published to: a stored subject without its partition token (what a
        signature binds: :mod:`bus.signing`); any other subject as it is."""
        stored = self.parse_stored(subject)
        return subject if stored is None else stored[2]


def partition_transform(events: str, partitions: int) -> tuple[str, str]:
    """The event stream's subject transform with ``partitions``: ``(src, dest)`` for the stream whose
    subjects are ``events`` (``<prefix>.evt.>``). JetStream stores ``<prefix>.evt.<wf>.<type>`` as
    ``<prefix>.evt.<wf>.<type>.<p>``, ``p`` the FNV-1a hash of the workflow token mod ``partitions``
    (``actors.partitions.partition_of``)."""
    base = events.removesuffix(">")
    return f"{base}*.*", f"{base}{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition({partitions},1)}}}}"


_TRANSFORM_DEST = re.compile(r"\{\{\s*partition\(\s*([0-9]+)\s*,\s*1\s*\)\s*\}\}$")


def transform_partitions(dest: str | None) -> int:
    """The partitions of a stream's subject transform destination (0: none, or not one of cadre's)."""
    m = _TRANSFORM_DEST.search(dest or "")
    return int(m.group(1)) if m else 0
