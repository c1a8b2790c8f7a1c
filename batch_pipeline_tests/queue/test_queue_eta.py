"""Finish-time forecasts: the queue played forward on its slots at each model's measured speed, the
speeds read from finished runs, the run tags, and the API's completion windows."""

import json
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from dagster import AssetMaterialization, DagsterRunStatus, build_sensor_context, instance_for_test
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.core.names import EXPECTED_COMPLETION_TAG, EXPECTED_START_TAG, RESPONSES_ASSET
from batch_pipeline.core.settings import Settings
from batch_pipeline.intake.validation import ValidationReport
from batch_pipeline.queue.eta import PlannedCell, forecast, seconds_for
from batch_pipeline.queue.policy import QueuedRun, QueuePolicy, queue_priorities
from batch_pipeline.queue.sensors import build_queue_sensor
from batch_pipeline.queue.speeds import (
    COLD_LAUNCH_SECONDS,
    COLD_SPEED,
    RUN_SECONDS,
    ModelSpeed,
    Speeds,
    launch_gaps,
    measured_speeds,
    speed_from_runs,
)
from batch_pipeline.queue.view import queue_cells
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.dagster_runs import queued_gpu_run
from batch_pipeline_tests.support.models import MODEL

# No per-run overhead and an instant launch: the plans below are pure load and generation.
A = ModelSpeed(rows_per_second=10.0, tokens_per_row=50.0, load_seconds=30.0, overhead_seconds=0.0,
               wrap_up_seconds=0.0, basis="measured")
B = ModelSpeed(rows_per_second=2.0, tokens_per_row=None, load_seconds=60.0, overhead_seconds=0.0,
               wrap_up_seconds=0.0, basis="measured")
AB = Speeds(models={"A": A, "B": B}, launch_seconds=0.0)


def _cell(run_id: str, model: str, rows: int, running: bool = False, **fields) -> PlannedCell:
    return PlannedCell(run_id=run_id, model=model, rows_left=rows, running=running, **fields)


def test_queued_runs_take_the_slot_that_frees_first_and_load_only_a_model_it_does_not_hold():
    cells = [_cell("r1", "A", 100, running=True), _cell("r2", "B", 20, running=True),
             _cell("q1", "A", 50), _cell("q2", "B", 40)]
    plan = forecast(cells, AB, ["A", "B"], now=1000.0, started_at={"r1": 990.0, "r2": 995.0})
    assert (plan["r1"].expected_start_at, plan["r1"].expected_completion_at) == (990.0, 1010.0)
    assert plan["r2"].expected_completion_at == 1010.0
    # Both slots free at 1010: q1 takes the one holding A (no load), q2 the one holding B.
    assert (plan["q1"].expected_start_at, plan["q1"].expected_completion_at) == (1010.0, 1015.0)
    assert (plan["q2"].expected_start_at, plan["q2"].expected_completion_at) == (1010.0, 1030.0)


def test_a_slot_that_holds_another_model_pays_the_load_and_a_running_cell_uses_its_own_pace():
    cells = [_cell("r1", "A", 100, running=True, live_rows_per_second=20.0), _cell("q1", "B", 10)]
    plan = forecast(cells, AB, ["A"], now=0.0)
    assert plan["r1"].expected_completion_at == 5.0 and plan["r1"].basis == "this run's pace"
    assert plan["q1"].expected_start_at == 5.0 and plan["q1"].expected_completion_at == 5.0 + 60.0 + 5.0


def test_an_unknown_model_gets_the_cold_default():
    cold = Speeds(models={})
    plan = forecast([_cell("q1", "new", 40)], cold, [None], now=0.0)
    assert plan["q1"].basis == "cold default" and plan["q1"].expected_start_at == cold.launch_seconds
    assert plan["q1"].expected_completion_at == pytest.approx(
        cold.launch_seconds + COLD_SPEED.load_seconds + COLD_SPEED.overhead_seconds + 40 / COLD_SPEED.rows_per_second)


def _run(rows: int, tokens_per_row: float, seconds: float, cap: float | None = None) -> dict:
    return {"rows_generated_this_run": rows, "generation_seconds": seconds, "succeeded": rows, "failed": 0,
            "completion_tokens": rows * tokens_per_row, "max_tokens_per_row": cap}


def test_runs_of_different_answer_lengths_split_the_cost_per_row_from_the_cost_per_token():
    # 0.1 s per row (the prompt) and 0.002 s per answer token; every run filled its cap.
    runs = [_run(400, 16, 400 * (0.1 + 0.002 * 16), cap=16), _run(200, 32, 200 * (0.1 + 0.002 * 32), cap=32)]
    speed = speed_from_runs(runs)
    assert speed.seconds_per_row == pytest.approx(0.1) and speed.seconds_per_token == pytest.approx(0.002)
    assert speed.natural_tokens_per_row is None  # answers ran to their caps: a new cap is the length
    # Short answers save only their tokens, not the prompt's share.
    assert seconds_for(600, speed, max_tokens_per_row=8) == pytest.approx(600 * (0.1 + 0.002 * 8))
    assert seconds_for(100, speed, max_tokens_per_row=64) == pytest.approx(100 * (0.1 + 0.002 * 64))
    # One answer length cannot split them: rows per second, whatever the batch's cap.
    alone = speed_from_runs(runs[:1])
    assert alone.seconds_per_row is None and seconds_for(100, alone, 8) == pytest.approx(100 / alone.rows_per_second)


def test_a_model_that_stops_before_its_cap_is_expected_at_its_own_length():
    runs = [_run(100, 40, 100 * (0.1 + 0.002 * 40), cap=256), _run(100, 12, 100 * (0.1 + 0.002 * 12), cap=12)]
    speed = speed_from_runs(runs)
    assert speed.natural_tokens_per_row == pytest.approx(40.0)
    assert seconds_for(10, speed, max_tokens_per_row=256) == pytest.approx(10 * (0.1 + 0.002 * 40))
    assert seconds_for(10, speed, max_tokens_per_row=20) == pytest.approx(10 * (0.1 + 0.002 * 20))


def test_speeds_come_from_recent_runs_that_generated_enough_rows():
    runs = [{"rows_generated_this_run": 100, "generation_seconds": 20.0, "succeeded": 100, "failed": 0,
             "completion_tokens": 1600, "engine": "server", "engine_reused": False, "engine_start_seconds": 40.0},
            {"rows_generated_this_run": 2, "generation_seconds": 9.0, "engine": "server", "engine_reused": True},
            {"rows_generated_this_run": 300, "generation_seconds": 40.0, "succeeded": 290, "failed": 10,
             "completion_tokens": 4800, "engine": "server", "engine_reused": True}]
    speed = speed_from_runs(runs)
    assert speed.rows_per_second == pytest.approx(400 / 60) and speed.tokens_per_row == pytest.approx(16.0)
    assert speed.load_seconds == 40.0 and speed.basis == "measured"
    assert speed_from_runs(runs[1:2]) == COLD_SPEED
    # Without the runs' wall times (runless records) the overheads stay at their cold defaults.
    assert speed.overhead_seconds == COLD_SPEED.overhead_seconds


def test_each_run_pays_its_overhead_a_running_one_only_its_wrap_up_and_each_queued_one_a_launch():
    runs = [{"rows_generated_this_run": 100, "generation_seconds": 20.0, "engine": "server", "engine_reused": False,
             "engine_start_seconds": 40.0, RUN_SECONDS: 70.0, "wrap_up_seconds": 3.0},
            {"rows_generated_this_run": 100, "generation_seconds": 10.0, "engine": "server", "engine_reused": True,
             RUN_SECONDS: 16.0, "wrap_up_seconds": 1.0}]
    speed = speed_from_runs(runs)  # overheads 70-40-20=10 and 16-10=6
    assert (speed.overhead_seconds, speed.wrap_up_seconds) == (8.0, 2.0)
    cells = [_cell("r1", "A", 100, running=True, live_rows_per_second=20.0), _cell("q1", "A", 100),
             _cell("q2", "A", 100)]
    plan = forecast(cells, Speeds(models={"A": speed.model_copy(update={"rows_per_second": 10.0})},
                                  launch_seconds=4.0), ["A"], now=0.0)
    assert plan["r1"].expected_completion_at == 5.0 + 2.0
    assert (plan["q1"].expected_start_at, plan["q1"].expected_completion_at) == (11.0, 11.0 + 8.0 + 10.0)
    assert plan["q2"].expected_start_at == 33.0


def test_the_launch_gap_counts_only_runs_that_waited_for_an_earlier_one():
    def record(created, started, ended):
        return SimpleNamespace(create_timestamp=datetime.fromtimestamp(created, timezone.utc), start_time=started,
                               end_time=ended)

    first, waited, idle = record(0, 1, 10), record(2, 13, 20), record(30, 33, 40)
    assert launch_gaps([idle, waited, first]) == [3.0]


def test_an_earlier_deadline_goes_first_among_runs_of_the_same_tier():
    runs = [QueuedRun(run_id="day", model="A", queued_at=0.0, deadline=86400.0),
            QueuedRun(run_id="hour", model="A", queued_at=10.0, deadline=3610.0),
            QueuedRun(run_id="inbox", model="A", queued_at=5.0)]  # no window: 24 hours
    placements = queue_priorities(runs, "A", now=20.0, policy=QueuePolicy())
    assert sorted(placements, key=lambda run_id: -placements[run_id].priority) == ["hour", "day", "inbox"]


def _finished_run(instance, dataset: str, model: str, rows: int, seconds: float) -> None:
    instance.report_runless_asset_event(AssetMaterialization(
        asset_key=RESPONSES_ASSET, partition=f"{dataset}|{model}",
        metadata={"rows_generated_this_run": rows, "generation_seconds": seconds, "succeeded": rows, "failed": 0,
                  "completion_tokens": rows * 16, "engine": "server", "engine_reused": False,
                  "engine_start_seconds": 30.0}))


def _validated(pipeline, dataset: str, requests: int, model: str) -> None:
    path = pipeline.layout.dataset(dataset).validation
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ValidationReport(file="x.jsonl", lines=requests, requests=requests, model=model,
                                     endpoint="/v1/chat/completions", error_count=0, errors=[]).model_dump_json())


def test_the_queue_view_and_the_queued_runs_tags_show_when_each_run_should_start_and_finish(pipeline):
    with instance_for_test() as instance:
        _finished_run(instance, "earlier", "A", rows=200, seconds=20.0)  # A: 10 rows/s
        assert measured_speeds(instance).of("A").rows_per_second == pytest.approx(10.0)
        running = queued_gpu_run(instance, "A", status=DagsterRunStatus.STARTED)
        queued = queued_gpu_run(instance, "A")
        _validated(pipeline, "ds-a", 300, "A")
        cells = {cell.run_id: cell for cell in queue_cells(instance, pipeline.layout, now=1e10)}
        first, second = cells[running.run_id], cells[queued.run_id]
        # Runless records carry no wall times: the per-run overheads are the cold defaults.
        assert first.expected_completion_at == pytest.approx(1e10 + 30.0 + COLD_SPEED.wrap_up_seconds)
        assert second.expected_start_at == pytest.approx(first.expected_completion_at + COLD_LAUNCH_SECONDS)
        assert second.expected_completion_at == pytest.approx(
            second.expected_start_at + COLD_SPEED.overhead_seconds + 30.0) and second.eta_basis == "measured"

        build_queue_sensor(5, QueuePolicy())(build_sensor_context(instance=instance, resources={"pipeline": pipeline}))
        tags = instance.get_run_by_id(queued.run_id).tags
        assert tags[EXPECTED_START_TAG].endswith(" UTC") and tags[EXPECTED_COMPLETION_TAG].endswith(" UTC")


def _upload(client, rows: int) -> str:
    lines = "".join(json.dumps(request_line(f"r{i}")) + "\n" for i in range(rows)).encode()
    return client.post("/v1/files", files={"file": ("b.jsonl", lines, "application/jsonl")},
                       data={"purpose": "batch"}).json()["id"]


def _create(client, file_id: str, window: str):
    return client.post("/v1/batches", json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                                            "completion_window": window})


@pytest.mark.parametrize("window, seconds", [("1h", 3600), ("24h", 86400), ("7d", 7 * 86400)])
def test_completion_windows_set_when_a_batch_expires(pipeline, window, seconds):
    with instance_for_test() as instance, TestClient(base_url="http://localhost", app=create_app(
            Settings(data_dir=pipeline.data_dir), instance, refresh_interval_seconds=3600)) as client:
        batch = _create(client, _upload(client, 3), window).json()
        assert batch["completion_window"] == window and batch["expires_at"] - batch["created_at"] == seconds
        assert batch["warnings"] is None
        refused = _create(client, _upload(client, 3), "2h")
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "completion_window"


@pytest.mark.parametrize("strict", [False, True])
def test_a_batch_the_queue_cannot_finish_in_its_window_is_flagged_or_refused_when_strict(pipeline, strict):
    # "24h" lasts 240 s here, so "1h" lasts 10 s: 400 rows at the cold default need far longer.
    settings = Settings(data_dir=pipeline.data_dir, shim_completion_window_seconds=240,
                        shim_strict_completion_window=strict)
    with instance_for_test() as instance, TestClient(base_url="http://localhost", app=create_app(
            settings, instance, refresh_interval_seconds=3600)) as client:
        late = _create(client, _upload(client, 400), "1h")
        fine = _create(client, _upload(client, 400), "7d")
    assert fine.status_code == 200 and fine.json()["warnings"] is None
    if strict:
        assert late.status_code == 400 and late.json()["error"]["code"] == "completion_window_unmeetable"
    else:
        assert late.status_code == 200
        [warning] = late.json()["warnings"]
        assert "expected to complete at" in warning and f"cold default speed of {MODEL}" in warning
