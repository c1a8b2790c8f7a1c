"""Every Dagster name the code relies on, spelled once: jobs, asset keys, sensors, tags, the GPU pool."""

from dagster import AssetKey

# Jobs
INGEST_JOB = "ingest_batch"
RESPONSES_JOB = "generate_responses"

# Assets
REQUESTS_ASSET = AssetKey("batch_requests")
RESPONSES_ASSET = AssetKey("batch_responses")
COMPARISON_ASSET = AssetKey("model_comparison")
CURATION_EXPORT_ASSET = AssetKey("curation_export")
CURATED_ASSET = AssetKey("curated_dataset")
# The job a sensor or tool launches for each asset; the UI and backfills use `__ASSET_JOB` instead.
JOB_OF_ASSET = {REQUESTS_ASSET: INGEST_JOB, RESPONSES_ASSET: RESPONSES_JOB}

# Sensors
INBOX_SENSOR = "inbox_sensor"
RESPONSES_SENSOR = "responses_sensor"
SHIM_SENSOR = "shim_sensor"
FILE_RETENTION_SENSOR = "file_retention_sensor"
RETENTION_SENSOR = "retention_sensor"
QUEUE_SENSOR = "gpu_queue_sensor"
COMPARISON_SENSOR = "comparison_automation_sensor"
OUTBOX_SENSOR = "outbox_sensor"

# The concurrency pool every `batch_responses` run holds: one run per accelerator slot.
GPU_POOL = "gpu"

# Dagster's own run tags
PARTITION_TAG = "dagster/partition"
# A run over a range of partitions (a backfill launched as one run) names the range, not each key.
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PRIORITY_TAG = "dagster/priority"
RUN_KEY_TAG = "dagster/run_key"
RETRY_NUMBER_TAG = "dagster/retry_number"
WILL_RETRY_TAG = "dagster/will_retry"

# Our run tags
BATCH_ID_TAG = "batch_pipeline/batch_id"
MODEL_TAG = "batch_pipeline/model"
REASON_TAG = "batch_pipeline/queue_reason"
# What the queue policy last wrote, so a `dagster/priority` that differs from it was set by a user.
POLICY_PRIORITY_TAG = "batch_pipeline/policy_priority"
USER_PRIORITY_TAG = "batch_pipeline/user_priority"
# A GPU run's progress, rewritten at each chunk ("400/1000 rows done, 540 generated tokens/s, ETA 35s").
PROGRESS_TAG = "batch_pipeline/progress"
# The accelerator slot (core.slots) a GPU run holds, set when it takes it: where its model is warm.
GPU_SLOT_TAG = "batch_pipeline/gpu_slot"
# When the run's batch must be done (Unix seconds: created + completion window); the queue orders by it.
DEADLINE_TAG = "batch_pipeline/deadline"
# The queue's forecast for a queued run (ISO times, queue.eta), rewritten by the queue sensor.
EXPECTED_START_TAG = "batch_pipeline/expected_start"
EXPECTED_COMPLETION_TAG = "batch_pipeline/expected_completion"

# "true" on a `batch_responses` run: refuse, before generating anything, when the cell's recorded manifest
# (generation.manifest) names another engine than this run's. Set by `run-models --exact`, or in the launchpad.
EXACT_TAG = "batch_pipeline/exact"

# dagster-k8s reads this run tag (JSON) into the run's Kubernetes Job: how a GPU run asks for its GPUs.
K8S_CONFIG_TAG = "dagster-k8s/config"
