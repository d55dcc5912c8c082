"""Settings of a cadre process, read once here from flags and ``CADRE_*`` environment variables.

Precedence: command-line flag > environment variable > default. Libraries never read the
environment: the composition root builds frozen option objects from these settings and
passes them down.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from cadre.bus.auth import AuthNames
from cadre.bus.connection import ConnectOptions
from cadre.bus.requests_stream import IntakeOptions, IntakeSpec, intake_spec
from cadre.bus.retry import RetryPolicy
from cadre.bus.stream import StreamSpec
from cadre.bus.subjects import Subjects
from cadre.planner.providers import pricing
from cadre.planner.providers.pricing import ModelPrice
from cadre.planner.validation import Limits
from cadre.settings_errors import InvalidSettings, explain

# A list of strings from the environment: a JSON list, or (easier to type) comma-separated.
StrList = Annotated[list[str], NoDecode]


class RateLimit(BaseModel):
    """Calls a provider takes per minute, shared by every process (the budget enforces it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests_per_minute: int = Field(default=50, ge=0, description="0 = no calls")
    tokens_per_minute: int = Field(default=200_000, ge=0, description="input + max output tokens; 0 = no calls")


class Price(BaseModel):
    """USD per million tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0, description="default: 0.1 x input")
    cache_write: float | None = Field(default=None, ge=0, description="default: 1.25 x input")


def _price(p: ModelPrice) -> Price:
    return Price(input=p.input, output=p.output, cache_read=p.cache_read, cache_write=p.cache_write)


# The shipped price table (planner/providers/pricing.py) as settings; CADRE_PRICES and
# CADRE_DEFAULT_PRICE replace it.
DEFAULT_PRICES: dict[str, Price] = {prefix: _price(p) for prefix, p in pricing.DEFAULT_PRICES.items()}
DEFAULT_PRICE = _price(pricing.DEFAULT_PRICE)

DEFAULT_RATE_LIMITS: dict[str, RateLimit] = {
    "anthropic": RateLimit(requests_per_minute=50, tokens_per_minute=200_000),
    "gemini": RateLimit(requests_per_minute=60, tokens_per_minute=250_000),
    "openai": RateLimit(requests_per_minute=500, tokens_per_minute=200_000),
    "ollama": RateLimit(requests_per_minute=60, tokens_per_minute=1_000_000),
    "scripted": RateLimit(requests_per_minute=60_000, tokens_per_minute=1_000_000_000),  # a test's own answers
}

LLM_PROVIDERS = ("anthropic", "gemini", "openai", "ollama", "scripted")
"""The providers a fallback entry (``provider`` or ``provider:model``) may name."""

_LIMITS = Limits()

SERVICE_CONNECT_WAIT_S = 60.0  # default of connect_wait_s


class ValidatorLimits(BaseModel):
    """The validator's size limits on plans and steps (``planner.validation.Limits``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_tasks: int = Field(default=_LIMITS.max_tasks, ge=1)
    max_depth: int = Field(default=_LIMITS.max_depth, ge=1)
    max_steps_per_task: int = Field(default=_LIMITS.max_steps_per_task, ge=1)
    max_inputs_bytes: int = Field(default=_LIMITS.max_inputs_bytes, ge=1)

    def to_limits(self) -> Limits:
        return Limits(**self.model_dump())


POOL_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class AgentPool(BaseModel):
    """An agent pool: the tools its agents may use (``cadre actor agent --pool NAME``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    tools: list[str] = Field(min_length=1, description="the tools the pool's agents may use")


def check_pool_names(pools: dict[str, AgentPool]) -> dict[str, AgentPool]:
    """``pools``, if each name can name a durable consumer; else a ValueError naming the bad ones."""
    bad = [name for name in pools if not re.fullmatch(POOL_NAME, name)]
    if bad:
        raise ValueError(f"agent pool names are 1-64 of A-Z a-z 0-9 _ -, not {', '.join(map(repr, bad))}")
    return pools


def split_list(value: Any) -> Any:
    """A list setting given as text: a JSON list (``["a", "b"]``) or comma-separated (``a,b``)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc})") from None
    return [part.strip() for part in text.split(",") if part.strip()]


def check_fallback(entries: list[str] | None) -> list[str] | None:
    """A fallback list whose entries are ``provider`` or ``provider:model`` of :data:`LLM_PROVIDERS`."""
    for entry in entries or ():
        provider = entry.split(":", 1)[0]
        if provider not in LLM_PROVIDERS:
            raise ValueError(
                f"fallback entry {entry!r} names provider {provider!r}; expected provider or provider:model "
                f"with a provider of {', '.join(LLM_PROVIDERS)}"
            )
    return entries


Intelligence = Literal["basic", "adaptive", "intelligent", "autonomous"]
Mode = Literal["strict", "adaptive", "creative"]


class Settings(BaseSettings):
    """Everything a cadre process can be told; see ``docs/architecture.md`` for each setting."""

    model_config = SettingsConfigDict(env_prefix="CADRE_", frozen=True, extra="forbid", populate_by_name=True)

    nats_url: str | None = Field(
        default=None, description="NATS server URL(s), comma-separated; unset = the embedded server of data_dir"
    )
    nats_creds: Path | None = Field(
        default=None, description="NATS creds file of this process; unset = the data dir's for the embedded server"
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
    connect_wait_s: float | None = Field(
        default=None,
        ge=0,
        description="how long a service (cadre up, cadre actor) waits at start for NATS to come up, with backoff; "
        f"unset = {SERVICE_CONNECT_WAIT_S:g} s, 0 = fail at once (commands for people never wait)",
    )
    request_timeout_s: float = Field(default=5.0, gt=0)
    nats_retry_s: float = Field(
        default=60.0,
        ge=0,
        description="how long one NATS call keeps retrying through an outage (a cluster electing a leader, "
        "503/no responders, a reconnect) with backoff before it fails; actors' fetch loops never give up",
    )

    # actors
    workspace: Path | None = Field(default=None, description="fs.* tools' root (default: <data_dir>/workspace)")
    database: Path | None = Field(default=None, description="sql.* tools' SQLite file (default: the sample shop)")
    http_allow: StrList = Field(default_factory=list, description="URL prefixes http.get may fetch")
    tool_output_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description="hard cap on one tool output as JSON: a larger one fails its step once with output_too_large "
        "(outputs above tool_output_inline_max_bytes are stored by reference, so this may exceed the NATS "
        "server's max_payload)",
    )
    tool_output_inline_max_bytes: int = Field(
        default=256 * 1024,
        ge=1,
        description="a tool output larger than this (as JSON) is stored in the object store outputs_bucket under "
        "its digest, and its event carries the reference (keep it well below the server's max_payload, 1 MiB)",
    )
    outputs_bucket: str = Field(
        default="CADRE_OUTPUTS", description="JetStream object store of the outputs stored by reference"
    )
    tool_modules: StrList = Field(default_factory=list, description="Python modules defining TOOLS of your own")
    prohibited_tools: StrList = Field(default_factory=list, description="tools the validator refuses")
    approval_tools: StrList = Field(default_factory=list, description="tools that need a person's approval")
    policy: Path | None = Field(
        default=None,
        description="policy file (JSON or TOML) applied over these settings: tool policy, limits, caps, level, "
        "mode, agent pools (cadre/policy_file.py)",
    )
    limits: ValidatorLimits = Field(default_factory=ValidatorLimits, description="the validator's size limits")
    pools: dict[str, AgentPool] = Field(
        default_factory=dict, description='agent pools and their tools ({"files": {"tools": ["fs.read"]}})'
    )
    agent_pool: str | None = Field(
        default=None, pattern=POOL_NAME, description="the agent pool this process's agents serve (unset: none)"
    )
    keyring: Path | None = Field(
        default=None, description="the deployment's public keys and roles (default: <data_dir>/auth/keyring.json)"
    )
    approvers: dict[str, list[str]] = Field(
        default_factory=dict,
        description='who may approve each tool, by keyring name ({"fs.write": ["alice"]}); unlisted: any approver',
    )
    approval_timeout_s: float = Field(default=3600.0, gt=0, description="unanswered approvals are denied after")
    approve_below: float | None = Field(
        default=None, ge=0, le=1, description="a plan or task confidence below this waits for approval; unset = never"
    )
    reject_below: float | None = Field(
        default=None, ge=0, le=1, description="a plan or task confidence below this rejects the plan; unset = never"
    )
    on_failure: Literal["fail", "compensate"] = Field(
        default="fail",
        description="what a failing workflow does when its request does not say: fail, or compensate "
        "(undo its completed steps, last first, then fail)",
    )
    rate_limit_wait_max_s: float = Field(
        default=5.0,
        ge=0,
        description="a plan, decompose or recover consultation the provider's rate limit denies waits its "
        "retry_after_s, once, when at most this",
    )
    model_side_effects_need_approval: bool = Field(
        default=True,
        description="a tool with side effects that a model chose (a recovery) waits for a person's approval",
    )
    child_max_depth: int = Field(
        default=_LIMITS.max_child_depth,
        ge=0,
        description="how deep child workflows (a task whose tool is workflow.run) may nest; 0 allows none",
    )
    plan_library: Path | None = Field(default=None, description="example plans (default: ./examples/plans)")
    flows: Path | None = Field(
        default=None, description="folder of flow files (YAML/JSON, docs/flows.md) the planner may run (default: none)"
    )
    library_threshold: float = Field(default=0.35, ge=0, le=1, description="similarity a library plan needs")
    library_max_learned: int = Field(
        default=1_000, ge=0, description="plans of completed workflows the library keeps at most (newest kept)"
    )
    library_learn_explicit: bool = Field(
        default=False, description="completed workflows with a client's explicit plan join the plan library"
    )
    docs_dir: Path | None = Field(
        default=None, description="a folder of Markdown documents the planner and decomposer are grounded in"
    )
    grounding_examples: int = Field(
        default=3, ge=0, le=20, description="similar completed library plans shown to the planner as examples"
    )
    grounding_passages: int = Field(
        default=4, ge=0, le=50, description="passages of documentation retrieved for a prompt at most"
    )
    grounding_chars: int = Field(
        default=3000, ge=0, description="characters of documentation (and, apart, of examples) a prompt gets at most"
    )
    catalog_list_max: int = Field(
        default=40, ge=1, description="a catalog of more tools is cut to those retrieved for the request in prompts"
    )
    catalog_retrieve: int = Field(
        default=12, ge=1, le=200, description="tools retrieved for a request from a catalog above catalog_list_max"
    )
    actor_batch: int = Field(default=32, ge=1, le=1000)
    actor_max_in_flight: int = Field(default=64, ge=1)
    actor_max_ack_pending: int = Field(default=1000, ge=1)
    actor_ack_wait_s: float = Field(default=30.0, gt=0)
    actor_max_attempts: int = Field(default=5, ge=1)
    actor_drain_timeout_s: float = Field(default=10.0, ge=0)
    stop_grace_s: float = Field(
        default=5.0, ge=0, description="after a stop signal, a process ends at most this long after its drain timeout"
    )
    state_release_after_s: float = Field(
        default=5.0, ge=0, description="an actor process forgets a workflow's state this long after it ends"
    )
    state_max_workflows: int = Field(default=10_000, ge=1, description="workflow states an actor process keeps at most")
    state_recent_events: int = Field(
        default=2_000, ge=0, description="decoded events an actor process keeps for its actors' inputs"
    )
    state_feed: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="whether an actor process's state cache follows the whole event stream: off folds the "
        "process's own appends and inputs and reads the log at a gap; auto = off when the process runs every "
        "kind that appends (cadre up), else on",
    )
    partitions: int = Field(
        default=0,
        ge=0,
        le=4096,
        description="workflows hash to this many partitions, which the processes running the same actor kinds "
        "share through leases (each decodes and handles only its own, through a consumer per partition); the "
        "event stream stores the partition in each subject and keeps the count it got first (every process of a "
        "stream sets the same); 0 = no partitions, every process sees all",
    )
    partition_lease_ttl_s: float = Field(
        default=6.0, gt=0, description="a partition lease not renewed for this long expires (a dead process's)"
    )
    intelligence: Intelligence = Field(
        default="adaptive", description="intelligence level of workflows whose request does not set one"
    )
    mode: Mode = Field(default="adaptive", description="execution mode of workflows whose request does not set one")

    # LLM providers (the keys and base URLs are the vendors' usual variables)
    llm_provider: Literal["auto", "anthropic", "gemini", "openai", "ollama", "scripted", "none"] = Field(
        default="auto",
        description="auto = Anthropic if its key is set, else Gemini, else OpenAI, else none; "
        "ollama = a local Ollama (no key); scripted = replies from llm_script",
    )
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "CADRE_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_BASE_URL", "CADRE_ANTHROPIC_BASE_URL")
    )
    gemini_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("GOOGLE_API_KEY", "GEMINI_API_KEY", "CADRE_GEMINI_API_KEY"),
    )
    gemini_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GOOGLE_GEMINI_BASE_URL", "CADRE_GEMINI_BASE_URL")
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("OPENAI_API_KEY", "CADRE_OPENAI_API_KEY")
    )
    openai_base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "CADRE_OPENAI_BASE_URL"),
        description="any Chat Completions server (vLLM, llama.cpp, LM Studio); unset = api.openai.com",
    )
    openai_base_url_free: bool | None = Field(
        default=None,
        description="the models of OPENAI_BASE_URL cost 0 unless priced (default: when the server is on this "
        "machine or the local network; a paid gateway keeps the price table)",
    )
    openai_response_format: Literal["auto", "json_schema", "json_object"] = Field(
        default="auto", description="how the openai/ollama provider asks for JSON (auto: by model)"
    )
    ollama_base_url: str = Field(
        default="http://localhost:11434/v1", description="the Chat Completions URL of the ollama preset"
    )
    llm_script: str | None = Field(
        default=None,
        description="scripted provider: a JSON/TOML file of replies per kind, or module:function",
    )
    llm_fallback: StrList = Field(
        default_factory=list,
        description="providers asked in turn when the first is down, overloaded or rate-limited "
        "(provider or provider:model, every role)",
    )
    llm_fallback_planner: StrList | None = Field(default=None, description="the planner's own fallback list")
    llm_fallback_decomposer: StrList | None = Field(default=None, description="the decomposer's own fallback list")
    llm_fallback_agent: StrList | None = Field(default=None, description="the agent's own fallback list")
    model_planner: str | None = Field(default=None, description="model for plan and adapt (default per provider)")
    model_decomposer: str | None = Field(default=None, description="model for decompose (default per provider)")
    model_agent: str | None = Field(
        default=None, description="model for recover, interpret and decide (default per provider)"
    )
    llm_timeout_s: float = Field(default=60.0, gt=0, description="bound on each HTTP attempt")
    llm_max_retries: int = Field(default=2, ge=0, le=10, description="retries of transient errors, per call")
    llm_max_output_tokens_plan: int = Field(default=4096, ge=64, description="output limit of plan and adapt calls")
    llm_max_output_tokens: int = Field(default=1024, ge=64, description="output limit of every other call")

    # budget
    budget_workflow_usd: float = Field(
        default=0.50, ge=0, description="LLM spend cap of a workflow whose request sets no budget_usd"
    )
    budget_daily_usd: float = Field(default=10.0, ge=0, description="LLM spend cap of the deployment per UTC day")
    budget_reservation_timeout_s: float = Field(
        default=900.0, gt=0, description="an unsettled reservation is settled at its worst case after this"
    )
    rate_limits: dict[str, RateLimit] = Field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    prices: dict[str, Price] = Field(
        default_factory=lambda: dict(DEFAULT_PRICES), description="USD per million tokens, by model name prefix"
    )
    default_price: Price = DEFAULT_PRICE
    ledger_stream_name: str = "CADRE_LEDGER"
    inference_cache_bucket: str = "CADRE_INFERENCE"
    inference_cache_ttl_s: float = Field(default=86_400.0, ge=0, description="0 = no inference cache")
    budget_timeout_s: float = Field(default=2.0, gt=0, description="a budget that does not answer by then = denied")

    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="serve /metrics here (0 = any)")
    traces: Literal["auto", "otlp", "off"] = Field(
        default="auto",
        description="OpenTelemetry traces by OTLP/HTTP (the otel extra): auto = when an OTLP endpoint is set",
    )
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="the collector traces go to (the standard OTEL_ variables; the exporter reads them itself)",
    )

    # the web console (`cadre ui`, `cadre up --ui`: cadre/console/)
    ui_host: str = Field(default="127.0.0.1", description="the console listens on this address (loopback by default)")
    ui_port: int = Field(default=8470, ge=0, le=65535, description="the console's port (0 = any free one)")
    ui_stuck_after_s: float = Field(
        default=600.0, gt=0, description="the console lists a workflow as stuck after this long without an event"
    )

    # the durable intake (actors/intake.py): its stream is <stream_name>_REQUESTS, its bucket <stream_name>_INTAKE
    intake_max_pending: int = Field(
        default=100_000, ge=1, description="requests the requests stream holds at most (then it refuses new ones)"
    )
    intake_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="bytes the requests stream holds at most (then it refuses)"
    )
    intake_reply_wait_s: float = Field(
        default=3.0,
        gt=0,
        description="a requester whose request is not made a workflow by then is answered overloaded "
        "(keep it under the requesters' timeout)",
    )
    intake_concurrency: int = Field(default=64, ge=1, description="stored requests an intake takes at once")
    intake_ack_wait_s: float = Field(
        default=10.0, gt=0, description="a stored request taken by an intake that died is taken again after this"
    )
    intake_pairing_ttl_s: float = Field(
        default=600.0,
        gt=0,
        description="how long the intake's pairing records live after their last change (a refusal must be "
        "honoured within it: keep it above the longest time a stored request may wait to be taken)",
    )

    @field_validator("http_allow", "tool_modules", "prohibited_tools", "approval_tools", mode="before")
    @classmethod
    def _str_list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator(
        "llm_fallback", "llm_fallback_planner", "llm_fallback_decomposer", "llm_fallback_agent", mode="before"
    )
    @classmethod
    def _fallback_list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("llm_fallback", "llm_fallback_planner", "llm_fallback_decomposer", "llm_fallback_agent")
    @classmethod
    def _fallback_entries(cls, entries: list[str] | None) -> list[str] | None:
        return check_fallback(entries)

    @field_validator("pools")
    @classmethod
    def _pool_names(cls, pools: dict[str, AgentPool]) -> dict[str, AgentPool]:
        return check_pool_names(pools)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Environment and defaults, with the given (non-None) overrides on top.

        A value that cannot be used raises :class:`InvalidSettings`, one line naming the variable,
        what it takes and an example.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except (ValidationError, SourceError) as exc:
            raise InvalidSettings(explain(exc, cls.model_fields, from_flags=given)) from None

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
            partitions=self.partitions,
        )

    def retry_policy(self) -> RetryPolicy:
        """The backoff of every NATS call through an outage (``bus.retry``), bounded by ``nats_retry_s``."""
        return RetryPolicy(bound_s=self.nats_retry_s)

    def intake(self) -> IntakeSpec:
        """The intake's requests stream and pairing bucket (``bus/requests_stream.py``)."""
        return intake_spec(
            self.stream(),
            self.subjects,
            max_msgs=self.intake_max_pending,
            max_bytes=self.intake_max_bytes,
            pairing_ttl=self.intake_pairing_ttl_s,
        )

    def intake_options(self) -> IntakeOptions:
        return IntakeOptions(
            reply_wait=self.intake_reply_wait_s, concurrency=self.intake_concurrency, ack_wait=self.intake_ack_wait_s
        )

    def connect_options(
        self, url: str, name: str, creds: Path | None = None, *, service: bool = False
    ) -> ConnectOptions:
        """How to connect; a ``service`` (an actor process) waits up to ``connect_wait_s`` for NATS."""
        wait = (SERVICE_CONNECT_WAIT_S if self.connect_wait_s is None else self.connect_wait_s) if service else 0.0
        return ConnectOptions(url=url, name=name, connect_timeout=self.connect_timeout_s, creds=creds, wait_s=wait)

    @property
    def auth_dir(self) -> Path:
        """The embedded server's credentials and authorization config (generated on first start)."""
        return self.data_dir / "auth"

    def auth_names(self) -> AuthNames:
        return AuthNames(
            prefix=self.subject_prefix,
            stream=self.stream_name,
            ledger=self.ledger_stream_name,
            cache_bucket=self.inference_cache_bucket,
            outputs_bucket=self.outputs_bucket,
            pools=tuple(sorted(self.pools)),
            partitions=self.partitions,
        )

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
