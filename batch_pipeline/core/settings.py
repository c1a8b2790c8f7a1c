"""Every setting the service reads from its environment, read in one place and handed down.

CLI tools, sensors, runs and the API server each build `Settings()` once at start-up; no other
module reads `os.environ` for configuration.
"""

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DATA_DIR_ENV = "BATCH_PIPELINE_DATA"
POSTGRES_URL_ENV = "BATCH_PIPELINE_POSTGRES_URL"
EngineMode = Literal["auto", "server", "in_process"]


class InputLimits(BaseModel):
    """What one batch file may hold; the inbox, the validator and the API upload share them."""

    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024


class Settings(BaseSettings):
    """`BATCH_PIPELINE_<FIELD>` in the environment sets each field (README: Configuration)."""

    model_config = SettingsConfigDict(env_prefix="BATCH_PIPELINE_", frozen=True, populate_by_name=True)

    data_dir: Path = Field(Path("data"), validation_alias=AliasChoices(DATA_DIR_ENV, "data_dir"))
    dagster_home: Path = Field(Path("data/dagster_home"), validation_alias=AliasChoices("DAGSTER_HOME", "dagster_home"))
    postgres_url: str | None = None

    # Intake
    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    # A file must keep its size this long before the inbox sensor takes it.
    inbox_settle_seconds: float = 2.0
    sensor_interval: int = 5

    # Generation
    chunk_size: int = 100
    # Enough queued requests that vLLM's scheduler always fills its batch (max_num_seqs).
    max_in_flight: int = 1024
    engine_mode: EngineMode = "auto"
    in_process_min_rows: int = 2000
    engine_idle_seconds: float = 600.0

    # Queue
    queue_max_wait_seconds: float = 1800.0
    queue_max_passed_over: int = 5

    # OpenAI-compatible API
    shim_host: str = "127.0.0.1"
    shim_port: int = 4080
    shim_api_key: str | None = None
    # Without an API key the shim only listens on a loopback address unless this says otherwise.
    shim_allow_unauthenticated: bool = False
    # JSON request bodies (e.g. creating a batch) are small; uploads have their own limit (max_bytes).
    shim_max_json_bytes: int = 1024 * 1024
    # OpenAI accepts only "24h"; the real window is configurable so expiry can be exercised.
    shim_completion_window_seconds: int = 24 * 3600

    # Dagster UI started by `make run`
    ui_host: str = "127.0.0.1"
    ui_port: int = 3000

    @field_validator("data_dir", "dagster_home")
    @classmethod
    def _absolute(cls, path: Path) -> Path:
        return path.resolve()

    @field_validator("shim_api_key", "postgres_url")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value or None
