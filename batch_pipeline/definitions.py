import os

from dagster import Definitions, define_asset_job, in_process_executor

from batch_pipeline.assets.comparison import model_comparison
from batch_pipeline.assets.curation import curated_dataset, curation_export
from batch_pipeline.assets.requests import batch_requests
from batch_pipeline.assets.responses import batch_responses
from batch_pipeline.resources import PipelineConfig
from batch_pipeline.sensors.automation import build_comparison_automation_sensor
from batch_pipeline.sensors.inbox import build_inbox_sensor
from batch_pipeline.sensors.queue import build_queue_sensor, queue_policy_from_env
from batch_pipeline.sensors.responses import build_responses_sensor
from batch_pipeline.sensors.shim import build_shim_sensor

SENSOR_INTERVAL_SECONDS = int(os.environ.get("BATCH_PIPELINE_SENSOR_INTERVAL", 5))

ingest_job = define_asset_job("ingest_batch", selection=[batch_requests])
responses_job = define_asset_job("generate_responses", selection=[batch_responses])

defs = Definitions(
    assets=[batch_requests, batch_responses, model_comparison, curation_export, curated_dataset],
    jobs=[ingest_job, responses_job],
    sensors=[
        build_inbox_sensor(ingest_job, SENSOR_INTERVAL_SECONDS),
        build_responses_sensor(responses_job, SENSOR_INTERVAL_SECONDS),
        build_shim_sensor(responses_job, SENSOR_INTERVAL_SECONDS),
        build_queue_sensor(SENSOR_INTERVAL_SECONDS, queue_policy_from_env()),
        build_comparison_automation_sensor(SENSOR_INTERVAL_SECONDS),
    ],
    resources={"pipeline": PipelineConfig.from_env()},
    # Every job, the UI's and backfills' too, runs in the run worker: an engine in a per-step child
    # process would escape run termination and the run-worker health check.
    executor=in_process_executor,
)
