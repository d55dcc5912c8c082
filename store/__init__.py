"""The event log: append and read on JetStream, export to and read from files, fold to state."""

from store.filelog import FileLog, LogFileError, export, heads, write_export
from store.integrity import Anchor, Problem, Verdict, verify
from store.jetstream import MAX_ATOMIC_BATCH, AppendResult, JetStreamLog
from store.records import Malformed, Record, StoredEvent, events_only, to_record
from store.source import EventSource
from store.state import WorkflowState, apply, fold, skip

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
