"""What every finished batch adds up to, per model, folded from `batch_responses` materializations.

Every GPU run that finishes records its figures as materialization metadata, whatever launched it
(inbox, API, `run_models`, the UI), so this covers every batch. The tally reads only the events
after the last one it saw, so a scrape costs the same after a thousand batches as after one.
"""

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from dagster import AssetRecordsFilter, DagsterInstance
from pydantic import BaseModel

from batch_pipeline.core.metadata import metadata_value
from batch_pipeline.core.names import RESPONSES_ASSET
from batch_pipeline.core.partitions import cell_of

_PAGE = 500
# Where a reused answer came from, by the materialization metadata that counts it.
_REUSE_SOURCES = {"batch_copy": "rows_deduplicated", "result_cache": "rows_from_result_cache"}


class CellResult(BaseModel):
    """A finished (dataset, model) cell, as its latest materialization describes it."""

    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # per hosted model: what the cell's tokens would cost there (core.costs)
    hosted_cost_usd: dict[str, float] = {}


class ModelRuns(BaseModel):
    """What the runs that finished a model's cells did, summed over every materialization."""

    rows_generated: int = 0
    generation_seconds: float = 0.0
    # per engine kind (`server`, `in_process`): loads, their seconds, and runs that found it loaded
    engine_starts: dict[str, int] = {}
    engine_start_seconds: dict[str, float] = {}
    engine_reuses: dict[str, int] = {}
    # per source (`batch_copy`, `result_cache`): rows answered with an answer generated for another request
    rows_reused: dict[str, int] = {}
    # accelerator time, engine loads included
    gpu_seconds: float = 0.0


class ResultsTally:
    def __init__(self):
        self.cells: dict[tuple[str, str], CellResult] = {}
        self.runs: dict[str, ModelRuns] = defaultdict(ModelRuns)
        self.last_storage_id: int | None = None

    def add(self, partition: str, metadata: Mapping[str, Any]) -> None:
        """Folds one materialization in; the latest one of a cell replaces its result."""
        cell = cell_of(partition or "")
        if cell is None:
            return
        self.cells[cell] = CellResult(
            succeeded=metadata_value(metadata, "succeeded"), failed=metadata_value(metadata, "failed"),
            prompt_tokens=metadata_value(metadata, "prompt_tokens"),
            completion_tokens=metadata_value(metadata, "completion_tokens"),
            hosted_cost_usd=metadata_value(metadata, "hosted_cost_usd", {}))
        runs = self.runs[cell[1]]
        runs.rows_generated += metadata_value(metadata, "rows_generated_this_run")
        runs.generation_seconds += metadata_value(metadata, "generation_seconds", 0.0)
        runs.gpu_seconds += metadata_value(metadata, "gpu_seconds", 0.0)
        for source, key in _REUSE_SOURCES.items():
            runs.rows_reused[source] = runs.rows_reused.get(source, 0) + metadata_value(metadata, key)
        engine = metadata_value(metadata, "engine", "none")
        if engine == "none":
            return
        if metadata_value(metadata, "engine_reused", False):
            runs.engine_reuses[engine] = runs.engine_reuses.get(engine, 0) + 1
        else:
            runs.engine_starts[engine] = runs.engine_starts.get(engine, 0) + 1
            runs.engine_start_seconds[engine] = (runs.engine_start_seconds.get(engine, 0.0)
                                                 + metadata_value(metadata, "engine_start_seconds", 0.0))

    def per_model(self) -> dict[str, tuple[int, CellResult]]:
        """Finished cells and their summed results, per model."""
        totals: dict[str, tuple[int, CellResult]] = {}
        for (_, model), cell in self.cells.items():
            count, total = totals.get(model, (0, CellResult()))
            totals[model] = (count + 1, CellResult(
                succeeded=total.succeeded + cell.succeeded, failed=total.failed + cell.failed,
                prompt_tokens=total.prompt_tokens + cell.prompt_tokens,
                completion_tokens=total.completion_tokens + cell.completion_tokens,
                hosted_cost_usd={name: total.hosted_cost_usd.get(name, 0.0) + cell.hosted_cost_usd.get(name, 0.0)
                                 for name in {*total.hosted_cost_usd, *cell.hosted_cost_usd}}))
        return totals

    def catch_up(self, instance: DagsterInstance) -> None:
        """Folds in every materialization recorded since the last call (callers serialize calls)."""
        while True:
            records = instance.fetch_materializations(
                AssetRecordsFilter(asset_key=RESPONSES_ASSET, after_storage_id=self.last_storage_id),
                limit=_PAGE, ascending=True).records
            for record in records:
                materialization = record.asset_materialization
                self.add(materialization.partition, materialization.metadata)
                self.last_storage_id = record.storage_id
            if len(records) < _PAGE:
                return
