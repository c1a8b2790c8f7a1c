from dagster import (
    AssetMaterialization,
    DagsterInstance,
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.names import INBOX_SENSOR, REQUESTS_ASSET, RUN_KEY_TAG
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.storage import write_json_atomic
from batch_pipeline.intake.assets import requests_metadata
from batch_pipeline.intake.inbox import InboxOutcome, accepted_datasets, sweep_inbox
from batch_pipeline.intake.ingest import InputChanged, ingest
from batch_pipeline.intake.requests_table import count_requests
from batch_pipeline.intake.validation import ValidationReport, read_validation

# API limit: Dagster gives a sensor evaluation 60 s, and every other sensor waits for this one.
# Validation ran at 34 MB/s (20,000 chat rows, 11 MB, idle core), so a tick ingests up to 32 MB and
# leaves larger inputs to ingest runs.
IN_TICK_INGEST_BYTES = 32 * 2**20


def _log(context: SensorEvaluationContext, outcome: InboxOutcome) -> None:
    if outcome.failed_because:
        context.log.error(f"could not take {outcome.file_name} in: {outcome.failed_because}")
    elif outcome.rejected_because:
        context.log.warning(f"rejected {outcome.file_name}: {outcome.rejected_because}")
    else:
        context.log.info(f"accepted {outcome.file_name} as dataset {outcome.dataset}")


def _awaiting_ingest(instance: DagsterInstance, layout: DataLayout, key: str, registered: set[str]) -> bool:
    if key not in registered:
        return True
    # The daemon adds partitions before it records runs: a crash in between leaves a registered
    # dataset with no run, which only its missing validation report and run record reveal.
    return not layout.dataset(key).validation.exists() and not instance.get_run_ids(
        RunsFilter(tags={RUN_KEY_TAG: key}), limit=1)


def _ingest_left_on_disk(context: SensorEvaluationContext, layout: DataLayout, key: str) -> ValidationReport | None:
    """The report of an ingest that ran to its end (failed, or passed and wrote the requests), whatever
    instance ran it. An unreadable report counts as none: the dataset is ingested again, which rewrites it."""
    try:
        report = read_validation(layout, key)
    except Exception as exc:
        context.log.error(f"{key}: its validation report cannot be read ({type(exc).__name__}: {exc})")
        return None
    return report if report is not None and (not report.ok or layout.dataset(key).requests.exists()) else None


def _requests_from_disk(layout: DataLayout, key: str, model: str) -> AssetMaterialization:
    paths = layout.dataset(key)
    metadata = requests_metadata(paths, model, count_requests(paths.requests))
    return AssetMaterialization(asset_key=REQUESTS_ASSET, partition=key,
                                metadata={**metadata, "recorded_from_disk": True})


def _ingest_in_tick(context: SensorEvaluationContext, pipeline: PipelineConfig, keys: list[str],
                    budget_bytes: int) -> set[str]:
    """Ingests, within the tick, the pending files that pass validation, up to `budget_bytes` of input.

    Saves a passing file its ingest run (a run start and a sensor pass). Each materialization is
    recorded before the report is written, so a report on disk proves it exists whatever step a
    crash hits. A file that fails is left to its ingest run, which names the bad lines in the UI."""
    try:
        registry = pipeline.registry()
    except RegistryError:
        return set()  # the ingest runs fail, naming the registry's problem
    layout, done = pipeline.layout, set()
    for key in keys:
        paths = layout.dataset(key)
        try:
            size = paths.input.stat().st_size
            if size > budget_bytes:
                continue
            budget_bytes -= size
            ingested = ingest(layout, key, registry, pipeline.limits)
        except InputChanged:
            continue  # its ingest run fails, naming both hashes
        except Exception as exc:  # e.g. a full disk: the ingest run reports it where users look
            context.log.warning(f"{key} is left to its ingest run: {type(exc).__name__}: {exc}")
            continue
        if not ingested.report.ok:
            continue
        context.instance.report_runless_asset_event(AssetMaterialization(
            asset_key=REQUESTS_ASSET, partition=key,
            metadata={**requests_metadata(paths, ingested.report.model, ingested.rows, ingested.content_sha256),
                      "ingested_by": INBOX_SENSOR}))
        write_json_atomic(paths.validation, ingested.report.model_dump())
        context.log.info(f"validated {key} in the tick: {ingested.rows} requests for {ingested.report.model}")
        done.add(key)
    return done


def build_inbox_sensor(ingest_job: JobDefinition, interval_seconds: int,
                       in_tick_bytes: int = IN_TICK_INGEST_BYTES) -> SensorDefinition:
    """Registers each accepted file as a dataset partition and ingests it: in the tick when it passes
    validation and fits `in_tick_bytes`, else through an ingest run requested in the same result.

    Files are moved before the result is committed; a crash in between is healed on a later tick,
    which takes up every accepted dataset that has neither a partition nor an ingest run. The run
    key is the dataset key, so no file ever starts two runs. A dataset this instance has never
    registered but an earlier one ingested (a fresh instance database over an existing data folder)
    is registered with its materialization recorded from disk, or, if it failed validation, with
    none: neither takes a run.
    """

    @sensor(name=INBOX_SENSOR, job=ingest_job, minimum_interval_seconds=interval_seconds,
            default_status=DefaultSensorStatus.RUNNING)
    def _inbox_sensor(context: SensorEvaluationContext, pipeline: PipelineConfig):
        layout = pipeline.layout
        for outcome in sweep_inbox(layout, pipeline.max_bytes, pipeline.inbox_settle_seconds):
            _log(context, outcome)
        registered = set(context.instance.get_dynamic_partitions(DATASETS.name))
        accepted = accepted_datasets(layout)
        new = [key for key in accepted if key not in registered]
        ingested = {key: report for key in new if (report := _ingest_left_on_disk(context, layout, key))}
        pending = [key for key in accepted if key not in ingested
                   and _awaiting_ingest(context.instance, layout, key, registered)]
        if pending:
            in_tick = _ingest_in_tick(context, pipeline, pending, in_tick_bytes)
            pending = [key for key in pending if key not in in_tick]
        if not pending and not new:
            return SkipReason("no new batch files")
        # The daemon stores asset events before partitions: a crash in between must not record twice.
        recorded = context.instance.get_materialized_partitions(REQUESTS_ASSET) if ingested else set()
        return SensorResult(
            run_requests=[RunRequest(run_key=key, partition_key=key) for key in pending],
            dynamic_partitions_requests=[DATASETS.build_add_request(new)] if new else [],
            asset_events=[_requests_from_disk(layout, key, report.model) for key, report in ingested.items()
                          if report.ok and key not in recorded],
        )

    return _inbox_sensor
