"""One workflow's records for a command: from an export file (no connection at all) or the live
log, with the keyring that checks them (:func:`cadre.trust.keyring_for`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cadre.bus.signing import Keyring
from cadre.commands import UsageError
from cadre.settings import Settings
from cadre.store.filelog import FileLog
from cadre.store.records import Record
from cadre.trust import keyring_for
from cadre.wiring import open_bus


@dataclass(frozen=True)
class WorkflowRecords:
    """The workflow's records in stored order, and the keyring (and its source) to check them with."""

    records: list[Record]
    keyring: Keyring | None
    keys_from: str


async def read_records(
    settings: Settings, wf: str, from_file: Path | None, *, name: str = "cadre", keys: Path | None = None
) -> WorkflowRecords:
    """The workflow's records and their keyring; a :class:`UsageError` when it has no records there."""
    export = FileLog.load(from_file) if from_file is not None else None
    if export is not None:
        records = await export.read_records(wf)
        where = str(from_file)
    else:
        async with open_bus(settings, name=name) as bus:
            records = await bus.log.read_records(wf)
            where = f"stream {bus.log.stream}"
    if not records:
        raise UsageError(f"no workflow {wf!r} in {where} (see `cadre workflows`)")
    return WorkflowRecords(records, *keyring_for(settings, keys, export))
