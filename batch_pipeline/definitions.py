"""The code location: what each concern exports, merged, with the resource every run and sensor uses."""

from dagster import Definitions, in_process_executor

from batch_pipeline.api.definitions import api_definitions
from batch_pipeline.comparison.definitions import comparison_definitions
from batch_pipeline.core.privacy import apply_umask
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.core.settings import Settings, load_settings
from batch_pipeline.curation.definitions import curation_definitions
from batch_pipeline.generation.definitions import generation_definitions
from batch_pipeline.intake.definitions import intake_definitions
from batch_pipeline.queue.definitions import queue_definitions
from batch_pipeline.retention.definitions import retention_definitions


def build_definitions(settings: Settings) -> Definitions:
    return Definitions.merge(
        intake_definitions(settings),
        generation_definitions(settings),
        queue_definitions(settings),
        api_definitions(settings),
        retention_definitions(settings),
        comparison_definitions(),
        curation_definitions(),
        Definitions(
            resources={"pipeline": PipelineConfig.from_settings(settings)},
            # Every job, the UI's and backfills' too, runs in the run worker: an engine in a per-step
            # child process would escape run termination and the run-worker health check.
            executor=in_process_executor,
        ),
    )


_settings = load_settings()
# Loaded first by every Dagster process (code servers, run workers), whoever started it.
apply_umask(_settings.share_with_group)
defs = build_definitions(_settings)
