"""`tools.run_models` against a real temporary instance with a run queue: runs are queued, not run."""

import subprocess
import sys

import pytest
from dagster import DagsterInstance, DagsterRunStatus, Definitions, RunsFilter, evaluate_automation_conditions

from batch_pipeline.comparison.assets import model_comparison
from batch_pipeline.core.names import EXACT_TAG
from batch_pipeline.core.partitions import DATASETS, MODELS
from batch_pipeline.core.settings import DATA_DIR_ENV
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.tools.cli import ToolError
from batch_pipeline.tools.prepare_instance import prepare_instance
from batch_pipeline.tools.run_models import run_models
from batch_pipeline_tests.support.dagster_runs import ui_launched_run
from batch_pipeline_tests.support.models import MODEL, PROJECT_ROOT
from batch_pipeline_tests.support.results import finished_model, result, validated_dataset

KEY = "more-0123456789"


@pytest.fixture
def instance(pipeline, monkeypatch, tmp_path):
    # The code server the tool starts loads the definitions, which read the data folder from here.
    monkeypatch.setenv(DATA_DIR_ENV, pipeline.data_dir)
    home = tmp_path / "dagster_home"
    prepare_instance(home, postgres_url=None)  # the project's instance: runs wait in its queue
    with DagsterInstance.from_config(str(home)) as instance:
        yield instance


def _register(pipeline, name: str) -> None:
    registry = pipeline.layout.registry
    registry.write_text(registry.read_text() + f"  {name}:\n    engine: {{model: somewhere}}\n")


def test_queues_one_gpu_run_per_model_and_a_new_model_gets_its_column(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 2)
    _register(pipeline, "new-model")  # registered after the dataset arrived: no code change
    assert not instance.has_dynamic_partition(MODELS.name, "new-model")
    lines = run_models(instance, pipeline, [KEY], [MODEL, "new-model"])
    assert [line.split(": ")[0] for line in lines] == [f"{KEY} x {MODEL}", f"{KEY} x new-model"]
    assert all(": queued (run " in line for line in lines)
    assert set(instance.get_dynamic_partitions(MODELS.name)) == {MODEL, "new-model"}
    runs = instance.get_runs(RunsFilter(job_name="generate_responses"))
    assert {run.status for run in runs} == {DagsterRunStatus.QUEUED}
    assert sorted(run.tags["dagster/partition"] for run in runs) == [f"{KEY}|{MODEL}", f"{KEY}|new-model"]
    assert {run.tags["dagster/partition/dataset"] for run in runs} == {KEY}

    again = run_models(instance, pipeline, [KEY], ["new-model"])
    assert again[0].startswith(f"{KEY} x new-model: already queued (run ")
    assert len(instance.get_runs(RunsFilter(job_name="generate_responses"))) == 2


def test_a_cell_the_ui_is_already_running_is_not_queued_again(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 2)
    ui_run = ui_launched_run(instance, KEY, MODEL)
    assert run_models(instance, pipeline, [KEY], [MODEL]) == [f"{KEY} x {MODEL}: already started (run {ui_run.run_id})"]
    assert not instance.get_runs(RunsFilter(job_name="generate_responses"))


def test_a_model_with_results_is_not_run_again(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 2)
    output = pipeline.layout.responses(KEY, MODEL).output
    output.parent.mkdir(parents=True)
    output.write_text("")
    assert run_models(instance, pipeline, [KEY], [MODEL]) == [
        f"{KEY} x {MODEL}: already has results ({output.parent}; delete that folder to generate them again)"]
    assert not instance.get_runs(RunsFilter(job_name="generate_responses"))


def test_exact_queues_a_cell_with_results_again_and_its_run_carries_the_tag(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 2)
    output = pipeline.layout.responses(KEY, MODEL).output
    output.parent.mkdir(parents=True)
    output.write_text("")
    [line] = run_models(instance, pipeline, [KEY], [MODEL], exact=True)
    assert ": queued (run " in line
    [run] = instance.get_runs(RunsFilter(job_name="generate_responses"))
    assert run.tags[EXACT_TAG] == "true" and run.tags["dagster/partition"] == f"{KEY}|{MODEL}"


def test_unknown_model_or_dataset_is_refused_before_anything_changes(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 2)
    with pytest.raises(ToolError, match=f"model 'nope' is not registered; registered models: {MODEL}"):
        run_models(instance, pipeline, [KEY], [MODEL, "nope"])
    with pytest.raises(ToolError, match=f"dataset 'missing' not found in .*; datasets: {KEY}"):
        run_models(instance, pipeline, ["missing"], [MODEL])
    assert instance.get_dynamic_partitions(MODELS.name) == []
    assert instance.get_dynamic_partitions(DATASETS.name) == [KEY]


def test_command_line_errors_are_one_line_without_a_traceback(pipeline, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {"PATH": "/usr/bin:/bin", DATA_DIR_ENV: pipeline.data_dir, "DAGSTER_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "batch_pipeline.cli", "run-models", "--dataset", "nope",
                           "--models", MODEL], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr == f"batch-pipeline run-models: error: dataset 'nope' not found in {pipeline.layout.datasets}; datasets: none yet\n"


def test_the_comparison_waits_for_a_queued_model_of_its_dataset(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 2)
    _register(pipeline, "new-model")
    defs = Definitions(assets=[batch_responses, model_comparison], resources={"pipeline": pipeline})
    first = evaluate_automation_conditions(defs=defs, instance=instance)
    finished_model(instance, pipeline, KEY, MODEL, [result(i, "ok", 1) for i in range(2)])
    run_models(instance, pipeline, [KEY], ["new-model"])
    waiting = evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert waiting.total_requested == 0
    [queued] = instance.get_runs(RunsFilter(job_name="generate_responses"))
    instance.report_run_failed(queued)  # a failed model does not hold the comparison back
    after = evaluate_automation_conditions(defs=defs, instance=instance, cursor=waiting.cursor)
    assert after.get_requested_partitions(model_comparison.key) == {KEY}
