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
