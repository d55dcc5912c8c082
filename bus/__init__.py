"""The wire: events, subjects, codec, the NATS connection, the stream, the embedded server."""

from cadre.bus.codec import decode, encode, to_builtins
from cadre.bus.connection import ConnectOptions, barrier, connect
from cadre.bus.events import (
    EVENT_TYPES,
    SCHEMA_VERSION,
    TERMINAL_TYPES,
    Envelope,
    Event,
    PlanProposed,
    PlanRejected,
    PlanValidated,
    StepCompleted,
    StepFailed,
    StepReady,
    StepsProposed,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowRequested,
    derive_id,
    make_event,
)
from cadre.bus.plan import Check, ErrorInfo, Plan, StepIntent, Task
from cadre.bus.stream import StreamSpec, ensure_stream
from cadre.bus.subjects import Subjects, check_token

__all__ = [
    "EVENT_TYPES",
    "SCHEMA_VERSION",
    "TERMINAL_TYPES",
    "Check",
    "ConnectOptions",
    "Envelope",
    "ErrorInfo",
    "Event",
    "Plan",
    "PlanProposed",
    "PlanRejected",
    "PlanValidated",
    "StepCompleted",
    "StepFailed",
    "StepIntent",
    "StepReady",
    "StepsProposed",
    "StreamSpec",
    "Subjects",
    "Task",
    "WorkflowCompleted",
    "WorkflowFailed",
    "WorkflowRequested",
    "barrier",
    "check_token",
    "connect",
    "decode",
    "derive_id",
    "encode",
    "ensure_stream",
    "make_event",
    "to_builtins",
]
