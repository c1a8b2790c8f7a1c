"""Runs a dataset on more models without the UI: one queued GPU run per (dataset, model).

    batch-pipeline run-models --dataset KEY --models MODEL [MODEL ...] [--exact]

Each run joins the Dagster instance's queue exactly like the sensors' runs (one GPU run at a time)
and the daemon started by `make run` takes it from there; the dataset's `model_comparison` follows
once they have finished. Models come from data/registry.yaml; a model registered after the
dataset arrived gets its `models` partition (its column in the UI) here. With `exact` each run carries
core.names.EXACT_TAG: it refuses to generate when the cell's recorded manifest names another engine
(generation.manifest), and a cell that already has results is queued again to check just that.
"""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from dagster import DagsterInstance, MultiPartitionKey

from batch_pipeline.core.names import EXACT_TAG, RESPONSES_JOB
from batch_pipeline.core.partitions import DATASET_MODELS, DATASETS, MODELS, dataset_model_key
from batch_pipeline.core.registry import RegistryError
from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline.generation.launch import active_run
from batch_pipeline.tools.cli import ToolError, require_validated_dataset

WORKSPACE_FILE = Path(__file__).resolve().parents[2] / "workspace.yaml"
_ERROR_TAIL_LINES = 15


def submit_partition_run(instance: DagsterInstance, job_name: str, key: MultiPartitionKey,
                         workspace_file: Path = WORKSPACE_FILE, tags: dict[str, str] | None = None) -> str:
    """Submits one run of the job for one partition through Dagster's own CLI, which loads the same
    workspace the daemon does and hands the run to the instance's queue, as the sensors' runs are."""
    run_id = str(uuid.uuid4())
    command = [sys.executable, "-m", "dagster", "job", "launch", "-w", str(workspace_file), "-j", job_name,
               "--run-id", run_id, "--tags", json.dumps({**DATASET_MODELS.get_tags_for_partition_key(key), **(tags or {})})]
    done = subprocess.run(command, capture_output=True, text=True, cwd=workspace_file.parent,
                          env={**os.environ, "DAGSTER_HOME": instance.root_directory})
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-_ERROR_TAIL_LINES:])
        raise ToolError(f"`dagster job launch` could not queue {job_name} for {key}:\n{tail}")
    return run_id


def _why_not(instance: DagsterInstance, pipeline: PipelineConfig, dataset: str, model: str, exact: bool) -> str | None:
    if (active := active_run(instance, dataset, model)) is not None:
        return f"already {active.dagster_run.status.value.lower()} (run {active.dagster_run.run_id})"
    output = pipeline.layout.responses(dataset, model).output
    if output.exists() and not exact:
        return f"already has results ({output.parent}; delete that folder to generate them again)"
    return None


def run_models(instance: DagsterInstance, pipeline: PipelineConfig, datasets: list[str], models: list[str],
               workspace_file: Path = WORKSPACE_FILE, exact: bool = False) -> list[str]:
    """Returns one line per (dataset, model): the run queued, or why none was needed."""
    try:
        registry = pipeline.registry()
    except RegistryError as exc:
        raise ToolError(str(exc)) from None
    for model in models:
        if model not in registry.names():
            raise ToolError(f"model {model!r} is not registered; registered models: {registry.names_text()}")
    for dataset in datasets:
        require_validated_dataset(pipeline.layout, dataset)
    for definition, wanted in ((DATASETS, datasets), (MODELS, models)):
        missing = [key for key in dict.fromkeys(wanted) if not instance.has_dynamic_partition(definition.name, key)]
        if missing:
            instance.add_dynamic_partitions(definition.name, missing)
    pairs = [(dataset, model) for dataset in dict.fromkeys(datasets) for model in dict.fromkeys(models)]
    reasons = {pair: _why_not(instance, pipeline, *pair, exact) for pair in pairs}
    wanted = [pair for pair in pairs if reasons[pair] is None]
    tags = {EXACT_TAG: "true"} if exact else None
    for pair in wanted:
        run_id = submit_partition_run(instance, RESPONSES_JOB, dataset_model_key(*pair), workspace_file, tags)
        reasons[pair] = f"queued (run {run_id})"
    return [f"{dataset} x {model}: {reasons[(dataset, model)]}" for dataset, model in pairs]
