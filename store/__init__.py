"""The event log: append and read on JetStream, export to and read from files, fold to state."""

from cadre.store.filelog import FileLog, LogFileError, export, heads, write_export
from cadre.store.integrity import Anchor, Problem, Verdict, verify
from cadre.store.jetstream import MAX_ATOMIC_BATCH, AppendResult, JetStreamLog
from cadre.store.records import Malformed, Record, StoredEvent, events_only, to_record
from cadre.store.source import EventSource
from cadre.store.state import WorkflowState, apply, fold, skip

__all__ = [
    "MAX_ATOMIC_BATCH",
    "Anchor",
    "AppendResult",
    "EventSource",
    "FileLog",
    "JetStreamLog",
    "LogFileError",
    "Malformed",
    "Problem",
    "Record",
    "StoredEvent",
    "Verdict",
    "WorkflowState",
    "apply",
    "events_only",
    "export",
    "fold",
    "heads",
    "skip",
    "to_record",
    "verify",
    "write_export",
]
