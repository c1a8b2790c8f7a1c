import os
from pathlib import Path
from typing import Literal

from dagster import ConfigurableResource

from batch_pipeline.layout import DataLayout
from batch_pipeline.registry import Registry, load_registry
from batch_pipeline.settings import data_dir
from batch_pipeline.validation import ValidationLimits


class PipelineConfig(ConfigurableResource):
    """Everything a run or sensor needs to find data and size its work."""

    data_dir: str
    chunk_size: int = 100
    # Enough queued requests that vLLM's scheduler always fills its batch (max_num_seqs).
    max_in_flight: int = 1024
    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    # A file must keep its size this long before the inbox sensor takes it.
    inbox_settle_seconds: float = 2.0
    # Keep the engine loaded after a run, for a process that runs several (tests, benchmarks);
    # a run worker frees it so the process exits and the GPU is free for the next model.
    keep_engine_loaded: bool = False
    # "auto": reuse the long-lived vLLM server when it serves the run's engine, else start it for
    # batches under `in_process_min_rows` and load an in-process engine for larger ones.
    engine_mode: Literal["auto", "server", "in_process"] = "auto"
    in_process_min_rows: int = 2000
    # The server frees the GPU once no run has used it for this long.
    engine_idle_seconds: float = 600.0

    @classmethod
    def from_env(cls) -> "PipelineConfig":
        env = os.environ
        return cls(
            data_dir=str(data_dir()),
            chunk_size=int(env.get("BATCH_PIPELINE_CHUNK_SIZE", 100)),
            max_in_flight=int(env.get("BATCH_PIPELINE_MAX_IN_FLIGHT", 1024)),
            max_lines=int(env.get("BATCH_PIPELINE_MAX_LINES", 50_000)),
            max_bytes=int(env.get("BATCH_PIPELINE_MAX_BYTES", 200 * 1024 * 1024)),
            inbox_settle_seconds=float(env.get("BATCH_PIPELINE_INBOX_SETTLE_SECONDS", 2.0)),
            engine_mode=env.get("BATCH_PIPELINE_ENGINE_MODE", "auto"),
            in_process_min_rows=int(env.get("BATCH_PIPELINE_IN_PROCESS_MIN_ROWS", 2000)),
            engine_idle_seconds=float(env.get("BATCH_PIPELINE_ENGINE_IDLE_SECONDS", 600)),
        )

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.data_dir).resolve())

    def registry(self) -> Registry:
        return load_registry(self.layout.registry)

    @property
    def limits(self) -> ValidationLimits:
        return ValidationLimits(max_lines=self.max_lines, max_bytes=self.max_bytes)
