"""`batch_responses[dataset|model]`: one model's answers to one dataset, and the job that queues it."""

import errno
import time
from collections.abc import Callable
from datetime import UTC, datetime
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

from batch_pipeline.core.costs import PriceTableError, batch_cost, load_hosted_prices
from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import (
    EXACT_TAG,
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
from batch_pipeline.generation.cell_lock import CellBusy, CellHolder, hold_cell
from batch_pipeline.generation.checkpointing import ChunkProgress, GenerationSummary, generate_responses
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore, ResumePoint
from batch_pipeline.generation.engine.identity import EngineIdentity
from batch_pipeline.generation.engine.isolation import IsolatingEngine
from batch_pipeline.generation.engine.server import stop_server
from batch_pipeline.generation.engine.session import NO_ENGINE, ON_RAY, EngineUse, engine_session
from batch_pipeline.generation.engine.slots import SlotError, SlotTimeout, hold_slot
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.feed import DeduplicatingEngine
from batch_pipeline.generation.manifest import (
    CellManifest,
    ManifestError,
    check_manifest,
    exact_requested,
    read_manifest,
    write_manifest,
)
from batch_pipeline.generation.partial_outbox import PartialOutbox
from batch_pipeline.generation.quality import RULES, QualityReport, assess_cell
from batch_pipeline.generation.result_cache import CachingEngine, ResultCacheFile
from batch_pipeline.generation.results import ResponseTotals, preview_markdown, write_output_files
from batch_pipeline.generation.watchdog import EngineStalled
from batch_pipeline.intake.requests_table import count_requests
from batch_pipeline.intake.validation import read_validation


def _progress_reporter(context: AssetExecutionContext, partial: PartialOutbox | None) -> Callable[[ChunkProgress], None]:
    def report(progress: ChunkProgress) -> None:
        context.log.info(f"{progress.chunk}: {progress.summary()}")
        # The Runs list shows tags: the run's progress is readable there without opening its log.
        context.instance.add_run_tags(context.run.run_id, {PROGRESS_TAG: progress.summary()})
        if partial is not None:
            try:
                partial.refresh()
            except OSError as exc:  # a convenience copy: the chunks, and so the batch, are safe
                context.log.warning(f"could not refresh {partial.target}: {exc}")

    return report


def _resume(context: AssetExecutionContext, store: ChunkStore) -> ResumePoint:
    resume = store.prepare()
    for path in resume.quarantined:
        context.log.warning(f"unreadable chunk moved to {path}; its rows are generated again")
    return resume


def _settle_manifest(context: AssetExecutionContext, path: Path, store: ChunkStore, current: CellManifest,
                     exact: bool) -> CellManifest:
    """Runs under the cell's lock before anything is generated or reused: under --exact a cell whose
    recorded engine is not this run's is refused, naming what changed; otherwise that is a warning and
    this run's manifest (listing the earlier engines whose chunks stay) is recorded."""
    try:
        recorded = read_manifest(path)
    except ManifestError as exc:
        if exact:
            raise Failure(f"{exc}; with {EXACT_TAG}=true the run cannot tell what changed", allow_retries=False) from None
        context.log.warning(f"{exc}: recorded again")
        recorded = None
    check = check_manifest(recorded, current, len(store.paths()))
    if check.problem is not None:
        if exact:
            raise Failure(f"{EXACT_TAG}=true: refusing {current.dataset} x {current.model}, {check.problem}. "
                          f"Run without it to record the new engine (the recorded manifest is {path})",
                          allow_retries=False)
        context.log.warning(f"{check.problem}; recording the new manifest")
    write_manifest(path, check.record)
    return check.record


def _answer_from_cache(context: AssetExecutionContext, pipeline: PipelineConfig, spec: EngineSpec,
                       requests_path: Path, store: ChunkStore, cache_file: ResultCacheFile,
                       should_stop: Callable[[], bool], on_chunk: Callable[[ChunkProgress], None]) -> GenerationSummary:
    """Writes the answers the result cache holds before any engine is loaded: a repeated batch takes no
    accelerator slot and loads nothing."""
    cached = CachingEngine(None, spec.sampling, cache_file)
    summary = generate_responses(requests_path, store, _resume(context, store), cached, spec.model,
                                 ChunkPolicy.of(pipeline), pipeline.max_in_flight, pipeline.order_window,
                                 on_chunk=on_chunk, should_stop=should_stop)
    _note_cache(context, cached)
    summary.rows_from_result_cache = cached.answered_from_cache
    return summary


def _note_cache(context: AssetExecutionContext, cached: CachingEngine) -> None:
    if cached.failure is not None:
        context.log.warning(f"the result cache failed ({cached.failure}): the engine answers instead")
    if cached.answered_from_cache:
        context.log.info(f"{cached.answered_from_cache} row(s) answered from the result cache")


def _generate(context: AssetExecutionContext, pipeline: PipelineConfig, spec: EngineSpec, requests_path: Path,
              store: ChunkStore, suspects: Path, should_stop: Callable[[], bool],
              cache_file: ResultCacheFile | None,
              on_chunk: Callable[[ChunkProgress], None]) -> tuple[GenerationSummary, EngineUse]:
    """Loads an engine only when rows are missing and nobody asked the run to stop: a retry or a
    re-materialization of a finished cell just rewrites its output files, and a warm server stays up.
    Runs under the cell's lock; the resume point is read again once a slot is held, after the wait."""
    resume = _resume(context, store)
    total, stop = count_requests(requests_path), should_stop()
    before = GenerationSummary(rows_total=total, rows_resumed=len(resume.done_rows), chunks_resumed=resume.chunks,
                               stopped=stop)
    if len(resume.done_rows) < total and not stop and cache_file is not None and spec.entry.ray is None:
        before = before.followed_by(_answer_from_cache(context, pipeline, spec, requests_path, store, cache_file,
                                                       should_stop, on_chunk))
        resume = _resume(context, store)
    if len(resume.done_rows) >= total or before.stopped:
        return before, NO_ENGINE
    if spec.entry.ray is not None:
        from batch_pipeline.generation.ray.submit import generate_on_ray  # Ray is an optional extra

        return generate_on_ray(context, pipeline, spec, requests_path, store, resume, total, should_stop), ON_RAY
    try:
        with hold_slot(pipeline.layout, pipeline.slots, spec,
                       on_wait=lambda: context.log.info("every GPU slot is held: waiting for one"),
                       holder=f"run {context.run.run_id}", wait_seconds=pipeline.slot_wait_seconds) as held:
            # The queue policy reads where each model is warm from this tag.
            context.instance.add_run_tags(context.run.run_id, {GPU_SLOT_TAG: str(held.slot.index)})
            context.log.info(f"holding GPU {held.slot.describe()}")
            resume = _resume(context, store)
            if resume.chunks:
                context.log.info(f"resuming after {resume.chunks} chunk(s) ({len(resume.done_rows)} rows) on disk")
            with engine_session(spec, pipeline, total - len(resume.done_rows), held) as use:
                context.log.info(f"{use.kind.replace('_', '-')} engine for {spec.model}: "
                                 + ("reused, no load" if use.reused else f"loaded in {use.load_seconds:.1f}s"))
                isolated = IsolatingEngine(use.engine, suspects)
                deduplicated = DeduplicatingEngine(isolated, spec.sampling) if pipeline.deduplicate else None
                engine = deduplicated or isolated
                cached = CachingEngine(engine, spec.sampling, cache_file) if cache_file is not None else None
                try:
                    summary = generate_responses(
                        requests_path, store, resume, cached or engine, spec.model, ChunkPolicy.of(pipeline),
                        pipeline.max_in_flight, pipeline.order_window,
                        on_chunk=on_chunk, should_stop=should_stop,
                        stall_seconds=pipeline.engine_stall_seconds)
                except EngineStalled:
                    if use.kind == "server":
                        stop_server(held.files)  # the retry starts a fresh host instead of reusing the hung one
                    raise
                if deduplicated is not None:
                    summary.rows_deduplicated = deduplicated.copies_answered
                if cached is not None:
                    _note_cache(context, cached)
                    summary.rows_from_result_cache = cached.answered_from_cache
    except SlotError as exc:
        raise Failure(str(exc), allow_retries=False) from None
    except (SlotTimeout, EngineStalled) as exc:
        raise Failure(f"{exc}; the run is retried and resumes from the {len(store.paths())} chunk(s) on disk",
                      allow_retries=True) from None
    return before.followed_by(summary), use


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


def _cost_metadata(context: AssetExecutionContext, pipeline: PipelineConfig, accelerators: int,
                   summary: GenerationSummary, engine: EngineUse, totals: ResponseTotals) -> dict:
    """Accelerator time of this run (its engine load included) and the hosted price of the cell's tokens."""
    try:
        prices = load_hosted_prices(pipeline.hosted_prices)
    except PriceTableError as exc:
        context.log.warning(f"no cost figures: {exc}")
        return {}
    seconds = summary.seconds + (0.0 if engine.reused else engine.load_seconds)
    cost = batch_cost(prices, seconds, accelerators, totals.prompt_tokens, totals.completion_tokens)
    return {"gpu_seconds": cost.gpu_seconds, "gpu_seconds_per_million_tokens": cost.gpu_seconds_per_million_tokens,
            "hosted_cost_usd": MetadataValue.json(cost.hosted_cost_usd), "hosted_prices_as_of": cost.prices_as_of}


def _answer_cap(layout: DataLayout, dataset: str) -> float | None:
    try:
        validation = read_validation(layout, dataset)
    except (OSError, ValueError):  # a report that cannot be read costs the forecast a figure, not the run
        return None
    return validation.max_tokens_per_row if validation else None


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
        registry = pipeline.registry()
        spec = EngineSpec.of(registry, model, layout.registry.parent)
    except (RegistryError, KeyError) as exc:
        raise Failure(str(exc).strip('"'), allow_retries=False) from None
    # Computed once per run: the engine the answers of this run come from (weights, arguments, sampling, vLLM).
    identity = EngineIdentity.of(spec)
    cache_file = ResultCacheFile(layout.result_cache, identity.fingerprint,
                                 pipeline.result_cache_days) if pipeline.result_cache else None
    manifest = CellManifest(dataset=dataset, model=model, identity=identity, registry_entry=spec.entry,
                            recorded_at=datetime.now(UTC))

    paths = layout.responses(dataset, model)
    store = ChunkStore(paths.chunks)
    run_id = context.run.run_id

    def note_wait(holder: CellHolder | None) -> None:
        context.log.info(f"{dataset} x {model} is being written by "
                         f"{holder.describe() if holder else 'another run'}: waiting for it")

    try:
        with hold_cell(paths.folder, run_id, pipeline.cell_wait_seconds, on_wait=note_wait):
            remove_temp_files(paths.folder)  # only the cell's holder may: another run's are live writes
            manifest = _settle_manifest(context, paths.manifest, store, manifest, exact_requested(context.run.tags))
            summary, engine = _generate(context, pipeline, spec, requests_path, store, paths.suspects,
                                        should_stop=lambda: stop_requested(paths.stop_request, run_id),
                                        cache_file=cache_file,
                                        on_chunk=_progress_reporter(context, PartialOutbox.of(layout, dataset, model)))
            if summary.stopped:
                raise Failure(f"stopped on request (batch cancelled or expired) with {len(store.paths())} chunk(s) "
                              "kept; materialize again to finish", allow_retries=False)
            generated_at = time.monotonic()
            store = store.snapshot()  # the files, the checks and the metadata below read the same chunks
            totals = write_output_files(store, paths.output, paths.errors)
            quality = assess_cell(requests_path, store, paths.quality)
    except CellBusy as exc:
        raise Failure(str(exc), allow_retries=False) from None
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
        # The batch's answer cap (None when some line has none): with completion_tokens, whether answers
        # filled it, which the finish-time forecast reads (queue.speeds).
        "max_tokens_per_row": _answer_cap(layout, dataset),
        "rows_resumed": summary.rows_resumed,
        "rows_generated_this_run": summary.rows_generated,
        # Copies of a deterministic request in the batch, answered from the first (generation.feed).
        "rows_deduplicated": summary.rows_deduplicated,
        # Answers an earlier batch on the same engine fingerprint gave (generation.result_cache; opt-in).
        "rows_from_result_cache": summary.rows_from_result_cache,
        "generated_tokens_per_s": round(summary.tokens_per_s, 1),
        "generation_seconds": round(summary.seconds, 1),
        # From the last row to here (outputs, checks): what a forecast adds to a running run.
        "wrap_up_seconds": round(time.monotonic() - generated_at, 1),
        # Run retries (a dead run worker) resume from the chunks; the first attempt is 1.
        "attempt": int(context.run.tags.get(RETRY_NUMBER_TAG, 0)) + 1,
        "engine": engine.kind,
        "engine_reused": engine.reused,
        "engine_start_seconds": round(engine.load_seconds, 1),
        "chunks": len(store.paths()),
        "chunks_resumed": summary.chunks_resumed,
        # The engine the answers came from (generation.manifest); a rerun with --exact compares against it.
        "engine_fingerprint": manifest.fingerprint,
        "manifest": MetadataValue.json(manifest.model_dump(mode="json")),
        "manifest_file": MetadataValue.path(str(paths.manifest)),
        "output_file": MetadataValue.path(str(paths.output)),
        "error_file": MetadataValue.path(str(paths.errors)),
        "chunks_folder": MetadataValue.path(str(paths.chunks)),
        "preview": MetadataValue.md(preview_markdown(store)),
        **_cost_metadata(context, pipeline, registry.entry(model).engine.tensor_parallel_size, summary, engine, totals),
    })


responses_job = define_asset_job(RESPONSES_JOB, selection=[batch_responses])
