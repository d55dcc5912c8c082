"""The event log: append and read on JetStream, export to and read from files, fold to state."""

from store.filelog import FileLog, LogFileError, export, write_export
from store.jetstream import MAX_ATOMIC_BATCH, AppendResult, JetStreamLog
from store.records import Malformed, Record, StoredEvent, events_only, to_record
from store.source import EventSource
from store.state import WorkflowState, apply, fold, fold_with

__all__ = [
    "MAX_ATOMIC_BATCH",
    "AppendResult",
    "EventSource",
    "FileLog",
    "JetStreamLog",
    "LogFileError",
    "Malformed",
    "Record",
    "StoredEvent",
    "WorkflowState",
    "apply",
    "events_only",
    "export",
    "fold",
    "fold_with",
    "to_record",
    "write_export",
]
