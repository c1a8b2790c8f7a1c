"""`batch_responses[dataset|model]`: one model's answers to one dataset, and the job that queues it."""

import errno
from collections.abc import Callable
from pathlib import Path

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    Backoff,
    Failure,
    MaterializeResult,
    MetadataValue,
    RetryPolicy,
    asset,
    define_asset_job,
)

from batch_pipeline.core.names import (
    GPU_POOL,
    GPU_SLOT_TAG,
    PROGRESS_TAG,
    REQUESTS_ASSET,
    RESPONSES_ASSET,
    RESPONSES_JOB,
    RETRY_NUMBER_TAG,
)
from batch_pipeline.core.partitions import DATASET_MODELS
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.stop_request import stop_requested
from batch_pipeline.core.storage import remove_temp_files
from batch_pipeline.generation.checkpointing import ChunkProgress, GenerationSummary, generate_responses
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.engine.session import NO_ENGINE, ON_RAY, EngineUse, engine_session
from batch_pipeline.generation.engine.slots import SlotError, hold_slot
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.quality import RULES, QualityReport, assess_cell
from batch_pipeline.generation.results import preview_markdown, write_output_files
from batch_pipeline.intake.requests_table import count_requests


def _log_progress(context: AssetExecutionContext, progress: ChunkProgress) -> None:
    context.log.info(f"{progress.chunk}: {progress.summary()}")
    # The Runs list shows tags: the run's progress is readable there without opening its log.
    context.instance.add_run_tags(context.run.run_id, {PROGRESS_TAG: progress.summary()})


def _generate(context: AssetExecutionContext, pipeline: PipelineConfig, spec: EngineSpec, requests_path: Path,
              store: ChunkStore, should_stop: Callable[[], bool]) -> tuple[GenerationSummary, EngineUse]:
    """Loads an engine only when rows are missing and nobody asked the run to stop: a retry or a
    re-materialization of a finished cell just rewrites its output files, and a warm server stays up."""
    resume = store.prepare()
    for path in resume.quarantined:
        context.log.warning(f"unreadable chunk moved to {path}; its rows are generated again")
    if resume.chunks:
        context.log.info(f"resuming after {resume.chunks} chunk(s) ({len(resume.done_rows)} rows) on disk")
    total, stop = count_requests(requests_path), should_stop()
    if len(resume.done_rows) >= total or stop:
        return GenerationSummary(rows_total=total, rows_resumed=len(resume.done_rows), chunks_resumed=resume.chunks,
                                 stopped=stop), NO_ENGINE
    if spec.entry.ray is not None:
        from batch_pipeline.generation.ray.submit import (
            generate_on_ray,  # Ray is an optional extra
        )

        return generate_on_ray(context, pipeline, spec, requests_path, store, resume, total, should_stop), ON_RAY
    try:
        with hold_slot(pipeline.layout, pipeline.slots, spec,
                       on_wait=lambda: context.log.info("every GPU slot is held: waiting for one")) as held:
            # The queue policy reads where each model is warm from this tag.
            context.instance.add_run_tags(context.run.run_id, {GPU_SLOT_TAG: str(held.slot.index)})
            context.log.info(f"holding GPU {held.slot.describe()}")
            with engine_session(spec, pipeline, total - len(resume.done_rows)) as use:
                context.log.info(f"{use.kind.replace('_', '-')} engine for {spec.model}: "
                                 + ("reused, no load" if use.reused else f"loaded in {use.load_seconds:.1f}s"))
                summary = generate_responses(
                    requests_path, store, resume, use.engine, spec.model, pipeline.chunk_size,
                    pipeline.max_in_flight, pipeline.chunk_seconds,
                    on_chunk=lambda progress: _log_progress(context, progress), should_stop=should_stop)
    except SlotError as exc:
        raise Failure(str(exc), allow_retries=False) from None
    return summary, use


# An engine that dies mid-run (often the OOM killer picking the engine process) fails the step
# rather than the run worker; each retry resumes from the chunks on disk, so it costs at most a chunk.
ENGINE_RETRIES = RetryPolicy(max_retries=5, delay=10, backoff=Backoff.LINEAR)
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


# Not Dagster-blocking: a failed check must not fail the run that wrote every answer (a batch is still
# handed back); curation_export is the gate that refuses the cell.
_QUALITY_CHECKS = [AssetCheckSpec(rule.name, asset=RESPONSES_ASSET,
                                  description=rule.description + ("; curation refuses the cell otherwise"
                                                                  if rule.blocking else ""))
                   for rule in RULES]


def _check_results(report: QualityReport) -> list[AssetCheckResult]:
    return [AssetCheckResult(
        check_name=check.name, passed=check.passed,
        severity=AssetCheckSeverity.ERROR if check.blocking else AssetCheckSeverity.WARN,
        description=check.description,
        metadata={"share": check.share, "count": check.count, "of": check.of,
                  "examples": MetadataValue.json(check.examples)},
    ) for check in report.checks]


@asset(key=RESPONSES_ASSET, partitions_def=DATASET_MODELS, deps=[REQUESTS_ASSET], pool=GPU_POOL,
       group_name="batches", kinds={"vllm", "parquet"}, retry_policy=ENGINE_RETRIES, check_specs=_QUALITY_CHECKS)
def batch_responses(context: AssetExecutionContext, pipeline: PipelineConfig) -> MaterializeResult:
    """One model's answers to one dataset, checkpointed in chunks so a crashed run resumes."""
    keys = context.partition_key.keys_by_dimension
    dataset, model = keys["dataset"], keys["model"]
    layout = pipeline.layout
    requests_path = layout.dataset(dataset).requests
    if not requests_path.exists():
        raise Failure(f"dataset {dataset} has no validated requests: materialize batch_requests first",
                      allow_retries=False)
    try:
        spec = EngineSpec.of(pipeline.registry(), model, layout.registry.parent)
    except (RegistryError, KeyError) as exc:
        raise Failure(str(exc).strip('"'), allow_retries=False) from None

    paths = layout.responses(dataset, model)
    remove_temp_files(paths.folder)
    store = ChunkStore(paths.chunks)
    try:
        summary, engine = _generate(context, pipeline, spec, requests_path, store,
                                    should_stop=lambda: stop_requested(paths.stop_request, context.run.run_id))
        if summary.stopped:
            raise Failure(f"stopped on request (batch cancelled or expired) with {len(store.paths())} chunk(s) "
                          "kept; materialize again to finish", allow_retries=False)
        totals = write_output_files(store, paths.output, paths.errors)
        quality = assess_cell(requests_path, store, paths.quality)
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise Failure(f"the disk is full: {exc.strerror} while writing {exc.filename or paths.folder}. No partial "
                      f"file was kept and {len(store.paths())} finished chunk(s) are safe; free space under "
                      f"{layout.root}, then materialize again to resume from them.", allow_retries=False) from None
    return MaterializeResult(check_results=_check_results(quality), metadata={
        "rows": totals.rows,
        "succeeded": totals.succeeded,
        "failed": totals.failed,
        "prompt_tokens": totals.prompt_tokens,
        "completion_tokens": totals.completion_tokens,
        "rows_resumed": summary.rows_resumed,
        "rows_generated_this_run": summary.rows_generated,
        "generated_tokens_per_s": round(summary.tokens_per_s, 1),
        "generation_seconds": round(summary.seconds, 1),
        # Run retries (a dead run worker) resume from the chunks; the first attempt is 1.
        "attempt": int(context.run.tags.get(RETRY_NUMBER_TAG, 0)) + 1,
        "engine": engine.kind,
        "engine_reused": engine.reused,
        "engine_start_seconds": round(engine.load_seconds, 1),
        "chunks": len(store.paths()),
        "chunks_resumed": summary.chunks_resumed,
        "output_file": MetadataValue.path(str(paths.output)),
        "error_file": MetadataValue.path(str(paths.errors)),
        "chunks_folder": MetadataValue.path(str(paths.chunks)),
        "preview": MetadataValue.md(preview_markdown(store)),
    })


responses_job = define_asset_job(RESPONSES_JOB, selection=[batch_responses])
