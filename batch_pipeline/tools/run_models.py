"""Runs a dataset on more models without the UI: one queued GPU run per (dataset, model).

    python -m batch_pipeline.tools.run_models --dataset KEY --models MODEL [MODEL ...]

Each run joins the Dagster instance's queue exactly like the sensors' runs (one GPU run at a time)
and the daemon started by `make run` takes it from there; the dataset's `model_comparison` follows
once they have finished. Models come from data/registry.yaml; a model registered after the
dataset arrived gets its `models` partition (its column in the UI) here.
"""

import argparse
from pathlib import Path

from dagster import DagsterInstance, MultiPartitionKey
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from batch_pipeline.partitions import DATASET_MODELS, DATASETS, MODELS, dataset_model_key
from batch_pipeline.registry import RegistryError
from batch_pipeline.resources import PipelineConfig
from batch_pipeline.shim.lifecycle import ACTIVE_RUN_STATUSES
from batch_pipeline.shim.service import RESPONSES_JOB, latest_run, partition_tags, run_status
from batch_pipeline.tools.cli import ToolError, fail, open_instance, require_validated_dataset

WORKSPACE_FILE = Path(__file__).resolve().parents[2] / "workspace.yaml"


def submit_partition_runs(instance: DagsterInstance, job_name: str, keys: list[MultiPartitionKey],
                          workspace_file: Path = WORKSPACE_FILE) -> list[str]:
    """Creates and submits one run of the job per partition through the same workspace the daemon
    loads, so it launches them as it launches its sensors' runs. Returns the run ids."""
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(workspace_file)])) as process:
        workspace = process.create_request_context()
        [location_name] = workspace.code_location_names
        error = workspace.get_code_location_error(location_name)
        if error:
            raise ToolError(f"the code location {location_name} does not load: {error.message.strip()}")
        location = workspace.get_code_location(location_name)
        [repository] = location.get_repositories().values()
        job = location.get_job(JobSubsetSelector(location_name=location_name, repository_name=repository.name,
                                                 job_name=job_name, op_selection=None))
        plan = location.get_execution_plan(job, {}, step_keys_to_execute=None, known_state=None,
                                           instance=instance).execution_plan_snapshot
        run_ids = []
        for key in keys:
            run = instance.create_run(
                job_name=job.name, run_id=None, run_config={}, resolved_op_selection=None,
                step_keys_to_execute=plan.step_keys_to_execute, op_selection=None, status=None,
                root_run_id=None, parent_run_id=None,
                tags={**job.tags, **DATASET_MODELS.get_tags_for_partition_key(key)},
                job_snapshot=job.job_snapshot, execution_plan_snapshot=plan,
                parent_job_snapshot=job.parent_job_snapshot, remote_job_origin=job.get_remote_origin(),
                job_code_origin=job.get_python_origin(), asset_selection=None, asset_check_selection=None,
                asset_graph=repository.asset_graph)
            run_ids.append(instance.submit_run(run.run_id, workspace).run_id)
        return run_ids


def _why_not(instance: DagsterInstance, pipeline: PipelineConfig, dataset: str, model: str) -> str | None:
    latest = latest_run(instance, RESPONSES_JOB, partition_tags(dataset, model))
    if run_status(latest) in ACTIVE_RUN_STATUSES:
        return f"already {run_status(latest).lower()} (run {latest.dagster_run.run_id})"
    output = pipeline.layout.responses(dataset, model).output
    if output.exists():
        return f"already has results ({output.parent}; delete that folder to generate them again)"
    return None


def run_models(instance: DagsterInstance, pipeline: PipelineConfig, datasets: list[str], models: list[str],
               workspace_file: Path = WORKSPACE_FILE) -> list[str]:
    """Returns one line per (dataset, model): the run queued, or why none was needed."""
    try:
        registry = pipeline.registry()
    except RegistryError as exc:
        raise ToolError(str(exc)) from None
    for model in models:
        if model not in registry.models:
            raise ToolError(f"model {model!r} is not registered; registered models: {registry.names_text()}")
    for dataset in datasets:
        require_validated_dataset(pipeline.layout, dataset)
    for definition, wanted in ((DATASETS, datasets), (MODELS, models)):
        missing = [key for key in dict.fromkeys(wanted) if not instance.has_dynamic_partition(definition.name, key)]
        if missing:
            instance.add_dynamic_partitions(definition.name, missing)
    pairs = [(dataset, model) for dataset in dict.fromkeys(datasets) for model in dict.fromkeys(models)]
    reasons = {pair: _why_not(instance, pipeline, *pair) for pair in pairs}
    wanted = [pair for pair in pairs if reasons[pair] is None]
    run_ids = submit_partition_runs(instance, RESPONSES_JOB, [dataset_model_key(*pair) for pair in wanted],
                                    workspace_file) if wanted else []
    for pair, run_id in zip(wanted, run_ids):
        reasons[pair] = f"queued (run {run_id})"
    return [f"{dataset} x {model}: {reasons[(dataset, model)]}" for dataset, model in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", nargs="+", required=True, help="dataset key(s), as in data/datasets/")
    parser.add_argument("--models", nargs="+", required=True, help="registered model name(s)")
    args = parser.parse_args()
    try:
        with open_instance() as instance:
            for line in run_models(instance, PipelineConfig.from_env(), args.dataset, args.models):
                print(line)
    except ToolError as exc:
        fail("run_models", str(exc))


if __name__ == "__main__":
    main()
