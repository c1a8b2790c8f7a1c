from pathlib import Path

from dagster import ConfigurableResource

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.registry import Registry, load_registry
from batch_pipeline.core.settings import EngineMode, InputLimits, Settings, SlotKind
from batch_pipeline.core.slots import GpuSlot, parse_slots


class PipelineConfig(ConfigurableResource):
    """What a run or sensor needs to find data and size its work: the run-time slice of `Settings`."""

    data_dir: str
    chunk_size: int = 100
    chunk_seconds: float = 5.0
    max_in_flight: int = 1024
    max_lines: int = 50_000
    max_bytes: int = 200 * 1024 * 1024
    inbox_settle_seconds: float = 0.5
    # Keep the engine loaded after a run, for a process that runs several (tests, benchmarks);
    # a run worker frees it so the process exits and the GPU is free for the next model.
    keep_engine_loaded: bool = False
    # "auto": reuse the long-lived engine host when it serves the run's engine, else start it for
    # batches under `in_process_min_rows` and load an in-process engine for larger ones.
    engine_mode: EngineMode = "auto"
    in_process_min_rows: int = 2000
    # The server frees the GPU once no run has used it for this long.
    engine_idle_seconds: float = 600.0
    # `BATCH_PIPELINE_GPU_SLOTS` as written (core.slots): a run holds one slot for its engine.
    gpu_slots: str = ""
    gpu_slot_kind: SlotKind = "auto"
    # Deadlines (core.settings): on a busy cell, on a free slot, on the engine's next result.
    cell_wait_seconds: float = 600.0
    slot_wait_seconds: float = 3600.0
    engine_stall_seconds: float = 900.0
    # The Ray cluster's Job Submission address (e.g. http://127.0.0.1:8265) for entries with `ray`.
    ray_address: str = ""

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
