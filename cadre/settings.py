"""Settings of a cadre process, read once here from flags and ``CADRE_*`` environment variables.

Precedence: command-line flag > environment variable > default. Libraries never read the
environment: the composition root builds frozen option objects from these settings and
passes them down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bus.connection import ConnectOptions
from bus.stream import StreamSpec
from bus.subjects import Subjects


class Settings(BaseSettings):
    """Everything a cadre process can be told; see ``docs/architecture.md`` for each setting."""

    model_config = SettingsConfigDict(env_prefix="CADRE_", frozen=True, extra="forbid")

    nats_url: str | None = Field(
        default=None, description="NATS server URL(s), comma-separated; unset = the embedded server of data_dir"
    )
    data_dir: Path = Field(default=Path(".cadre"), description="where the embedded server keeps its data")
    embedded_port: int | None = Field(default=None, ge=1, le=65535, description="port of the embedded server")
    subject_prefix: str = "cadre"
    stream_name: str = "CADRE_EVENTS"
    stream_storage: Literal["file", "memory"] = "file"
    stream_replicas: int = Field(default=1, ge=1, le=5)
    stream_max_age_s: float = Field(default=0.0, ge=0, description="0 = keep events forever")
    stream_max_bytes: int = Field(default=-1, ge=-1)
    stream_duplicate_window_s: float = Field(default=120.0, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)

    # actors
    workspace: Path | None = Field(default=None, description="fs.* tools' root (default: <data_dir>/workspace)")
    database: Path | None = Field(default=None, description="sql.* tools' SQLite file (default: the sample shop)")
    http_allow: list[str] = Field(default_factory=list, description="URL prefixes http.get may fetch")
    tool_modules: list[str] = Field(default_factory=list, description="Python modules defining TOOLS of your own")
    prohibited_tools: list[str] = Field(default_factory=list, description="tools the validator refuses")
    approval_tools: list[str] = Field(default_factory=list, description="tools that need a person's approval")
    approval_timeout_s: float = Field(default=3600.0, gt=0, description="unanswered approvals are denied after")
    plan_library: Path | None = Field(default=None, description="example plans (default: ./examples/plans)")
    library_threshold: float = Field(default=0.35, ge=0, le=1, description="similarity a library plan needs")
    actor_batch: int = Field(default=32, ge=1, le=1000)
    actor_max_in_flight: int = Field(default=64, ge=1)
    actor_max_ack_pending: int = Field(default=1000, ge=1)
    actor_ack_wait_s: float = Field(default=30.0, gt=0)
    actor_max_attempts: int = Field(default=5, ge=1)
    actor_drain_timeout_s: float = Field(default=10.0, ge=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="serve /metrics here (0 = any)")

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Environment and defaults, with the given (non-None) overrides on top."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.subject_prefix)

    def stream(self) -> StreamSpec:
        return StreamSpec(
            name=self.stream_name,
            subjects=self.subjects.events,
            storage=self.stream_storage,
            replicas=self.stream_replicas,
            duplicate_window=self.stream_duplicate_window_s,
            max_age=self.stream_max_age_s,
            max_bytes=self.stream_max_bytes,
        )

    def connect_options(self, url: str, name: str) -> ConnectOptions:
        return ConnectOptions(url=url, name=name, connect_timeout=self.connect_timeout_s)

    @property
    def workspace_dir(self) -> Path:
        return self.workspace if self.workspace is not None else self.data_dir / "workspace"

    @property
    def database_path(self) -> Path:
        return self.database if self.database is not None else self.data_dir / "shop.db"

    @property
    def plan_library_dir(self) -> Path | None:
        if self.plan_library is not None:
            return self.plan_library
        default = Path("examples/plans")
        return default if default.is_dir() else None
