"""The log contract on an export file, and the file format's own errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cadre.bus import Subjects, encode
from cadre.bus.events import Envelope
from cadre.store import FileLog, LogFileError, Malformed, Record, to_record, write_export
from tests.log_contract import LogContract, MakeSource, happy_run


def build_file(
    path: Path, workflows: dict[str, list[Envelope]], garbage: list[tuple[str, bytes]], prefix: str = "cadre"
) -> FileLog:
    subjects = Subjects(prefix)
    records: list[Record] = []
    seq = 0
    for wf, events in workflows.items():
        for e in events:
            seq += 1
            records.append(to_record(subjects, seq, subjects.event(wf, e.type), encode(e)))
    for suffix, data in garbage:
        seq += 1
        records.append(to_record(subjects, seq, f"{prefix}.evt.{suffix}", data))
    with path.open("wb") as out:
        write_export(out, records, stream="CADRE_EVENTS", subjects=subjects)
    return FileLog.load(path)


class TestFileLog(LogContract):
    @pytest.fixture
    def make_source(self, tmp_path: Path) -> MakeSource:
        async def make(workflows: dict[str, list[Envelope]], garbage: list[tuple[str, bytes]]) -> FileLog:
            return build_file(tmp_path / "log.jsonl", workflows, garbage)

        return make


def test_export_keeps_the_stored_bytes_and_the_garbage(tmp_path: Path) -> None:
    log = build_file(tmp_path / "a.jsonl", {"wf": happy_run("wf")}, [("wf.x", b"\xff\x00bin")])
    again = io.BytesIO()
    write_export(again, log.records, stream="CADRE_EVENTS", subjects=log.subjects)
    assert again.getvalue() == (tmp_path / "a.jsonl").read_bytes()
    bad = log.records[-1]
    assert isinstance(bad, Malformed)
    assert bad.data == b"\xff\x00bin"


def test_custom_prefix_is_read_from_the_header(tmp_path: Path) -> None:
    log = build_file(tmp_path / "p.jsonl", {"wf": happy_run("wf")}, [], prefix="acme.cadre")
    assert log.subjects.prefix == "acme.cadre"
    assert all(not isinstance(r, Malformed) for r in log.records)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"^.*a\.jsonl:1: empty file"),
        (b"hello\n", r"^.*a\.jsonl:1: not a cadre export header"),
        (b'{"cadre_export": 99}\n', r"^.*a\.jsonl:1: export format 99 is newer"),
        (b'{"cadre_export": 1}\n{"seq": "x"}\n', r"^.*a\.jsonl:2: not an exported record"),
        (b'{"cadre_export": 1}\n{"seq": 1, "subject": "cadre.evt.w.x"}\n', r"^.*a\.jsonl:2: a record needs"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "a.jsonl").write_bytes(content)
    with pytest.raises(LogFileError, match=message):
        FileLog.load(tmp_path / "a.jsonl")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LogFileError, match=r"^cannot read event file '.*nope\.jsonl': No such file"):
        FileLog.load(tmp_path / "nope.jsonl")
