from pathlib import Path

from dagster import ConfigurableResource

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.registry import Registry, load_registry
from batch_pipeline.core.settings import EngineMode, InputLimits, Settings, SlotKind
from batch_pipeline.core.slots import GpuSlot, parse_slots


def _default(name: str):
    """Settings holds every default; the resource repeats none of them."""
    return Settings.model_fields[name].default


class PipelineConfig(ConfigurableResource):
    """What a run or sensor needs to find data and size its work: the run-time slice of `Settings`."""

    data_dir: str
    chunk_size: int = _default("chunk_size")
    chunk_seconds: float = _default("chunk_seconds")
    max_in_flight: int = _default("max_in_flight")
    order_window: int = _default("order_window")
    deduplicate: bool = _default("deduplicate")
    result_cache: bool = _default("result_cache")
    result_cache_days: float = _default("result_cache_days")
    hosted_prices: str = _default("hosted_prices")
    max_lines: int = _default("max_lines")
    max_bytes: int = _default("max_bytes")
    inbox_settle_seconds: float = _default("inbox_settle_seconds")
    # Keep the engine loaded after a run, for a process that runs several (tests, benchmarks);
    # a run worker frees it so the process exits and the GPU is free for the next model.
    keep_engine_loaded: bool = False
    # "auto": reuse the long-lived engine host when it serves the run's engine, else start it for
    # batches under `in_process_min_rows` and load an in-process engine for larger ones.
    engine_mode: EngineMode = _default("engine_mode")
    in_process_min_rows: int = _default("in_process_min_rows")
    # The server frees the GPU once no run has used it for this long.
    engine_idle_seconds: float = _default("engine_idle_seconds")
    # `BATCH_PIPELINE_GPU_SLOTS` as written (core.slots): a run holds one slot for its engine.
    gpu_slots: str = _default("gpu_slots")
    gpu_slot_kind: SlotKind = _default("gpu_slot_kind")
    # Deadlines (core.settings): on a busy cell, on a free slot, on the engine's next result, on a stop.
    cell_wait_seconds: float = _default("cell_wait_seconds")
    slot_wait_seconds: float = _default("slot_wait_seconds")
    engine_stall_seconds: float = _default("engine_stall_seconds")
    engine_stop_seconds: float = _default("engine_stop_seconds")
    # The Ray cluster's Job Submission address (e.g. http://127.0.0.1:8265) for entries with `ray`.
    ray_address: str = _default("ray_address")

    @classmethod
    def from_settings(cls, settings: Settings) -> "PipelineConfig":
        return cls(data_dir=str(settings.data_dir),
                   **settings.model_dump(include=set(cls.model_fields) - {"data_dir", "keep_engine_loaded"}))

    @property
    def layout(self) -> DataLayout:
        return DataLayout(Path(self.data_dir).resolve())

    @property
    def slots(self) -> tuple[GpuSlot, ...]:
        return parse_slots(self.gpu_slots)

    def registry(self) -> Registry:
        return load_registry(self.layout.registry)

    @property
    def limits(self) -> InputLimits:
        return InputLimits(max_lines=self.max_lines, max_bytes=self.max_bytes)
