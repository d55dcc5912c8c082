"""The read side every event log offers: JetStream live, or an exported file offline."""

from __future__ import annotations

from typing import Protocol

from cadre.bus.subjects import Subjects
from cadre.store.records import Record, StoredEvent


class EventSource(Protocol):
    """Read a workflow's events in stream order (``after_seq`` excludes what came before)."""

    subjects: Subjects

    @property
    def stream(self) -> str: ...

    async def read_records(self, workflow_id: str, *, after_seq: int = 0) -> list[Record]: ...

    async def read(self, workflow_id: str, *, after_seq: int = 0) -> list[StoredEvent]: ...

    async def last_seq(self, workflow_id: str) -> int: ...

    async def workflows(self) -> list[str]: ...

    async def object_bytes(self, digests: list[str]) -> dict[str, bytes]:
        """The objects of outputs stored by reference, by digest (a missing one left out)."""
        ...
