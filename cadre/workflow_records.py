"""One workflow's records for a command: from an export file (no connection at all) or the live log."""

from __future__ import annotations

from pathlib import Path

from cadre.commands import UsageError
from cadre.settings import Settings
from cadre.store.filelog import FileLog
from cadre.store.records import Record
from cadre.wiring import open_bus


async def read_records(settings: Settings, wf: str, from_file: Path | None, *, name: str = "cadre") -> list[Record]:
    """The workflow's records in stored order; a :class:`UsageError` when it has none there."""
    if from_file is not None:
        records = await FileLog.load(from_file).read_records(wf)
        where = str(from_file)
    else:
        async with open_bus(settings, name=name) as bus:
            records = await bus.log.read_records(wf)
            where = f"stream {bus.log.stream}"
    if not records:
        raise UsageError(f"no workflow {wf!r} in {where} (see `cadre workflows`)")
    return records
