"""What a batch cost: accelerator time and the hosted price of its tokens from the shipped, dated
table; on the materialization, in /metrics and on the completed batch object."""

import pytest
from dagster import AssetMaterialization, DagsterRun, DagsterRunStatus, instance_for_test
from fastapi.testclient import TestClient

from batch_pipeline.api.app import create_app
from batch_pipeline.core.costs import PriceTableError, batch_cost, load_hosted_prices
from batch_pipeline.core.names import RESPONSES_ASSET
from batch_pipeline.core.settings import Settings
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.monitoring.families import result_families
from batch_pipeline.monitoring.results import ResultsTally
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.shim_client import answer_rows, create_batch, upload_file, validate_batch


def test_the_shipped_price_table_is_dated_and_prices_tokens_per_million():
    prices = load_hosted_prices()
    assert prices.as_of and "openai/gpt-4o-mini" in prices.prices
    cost = batch_cost(prices, seconds=30.0, accelerators=2, prompt_tokens=600_000, completion_tokens=400_000)
    assert cost.gpu_seconds == 60.0 and cost.gpu_seconds_per_million_tokens == 60.0
    mini = prices.prices["openai/gpt-4o-mini"]
    assert cost.hosted_cost_usd["openai/gpt-4o-mini"] == pytest.approx(
        0.6 * mini.input_per_million + 0.4 * mini.output_per_million)
    assert cost.prices_as_of == prices.as_of


def test_a_broken_price_table_is_named(tmp_path):
    table = tmp_path / "prices.yaml"
    table.write_text("as_of: today\nprices:\n  x: {input_per_million: -1}\n")
    with pytest.raises(PriceTableError, match=str(table)):
        load_hosted_prices(table)


def _materialized(instance, dataset: str) -> None:
    instance.report_runless_asset_event(AssetMaterialization(
        asset_key=RESPONSES_ASSET, partition=f"{dataset}|{MODEL}",
        metadata={"succeeded": 2, "failed": 0, "prompt_tokens": 10, "completion_tokens": 4,
                  "rows_generated_this_run": 2, "generation_seconds": 3.0, "gpu_seconds": 3.5,
                  "gpu_seconds_per_million_tokens": 250000.0, "hosted_cost_usd": {"openai/gpt-4o": 0.0000325},
                  "hosted_prices_as_of": "2026-07-05"}))


def test_metrics_count_gpu_seconds_and_the_hosted_cost_of_finished_batches():
    with instance_for_test() as instance:
        _materialized(instance, "ds-1")
        _materialized(instance, "ds-1")  # the cell again: its cost counts once, its runs' time twice
        _materialized(instance, "ds-2")
        tally = ResultsTally()
        tally.catch_up(instance)
    samples = {(family.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in result_families(tally) for sample in family.samples}
    assert samples[("batch_pipeline_gpu_seconds", (("model", MODEL),))] == pytest.approx(10.5)
    assert samples[("batch_pipeline_hosted_cost_usd", (("hosted_model", "openai/gpt-4o"), ("model", MODEL)))] \
        == pytest.approx(0.000065)


def test_a_completed_batch_carries_its_cost(pipeline):
    with instance_for_test() as instance, TestClient(base_url="http://localhost", app=create_app(
            Settings(data_dir=pipeline.data_dir), instance, refresh_interval_seconds=3600)) as client:
        batch = create_batch(client, upload_file(client, [request_line("r0"), request_line("r1")]).json()["id"]).json()
        dataset = validate_batch(pipeline, instance, client, batch["id"])
        paths = pipeline.layout.responses(dataset, MODEL)
        ChunkStore(paths.chunks).write(0, answer_rows({0: "r0", 1: "r1"}))
        write_output_files(ChunkStore(paths.chunks), paths.output, paths.errors)
        _materialized(instance, dataset)
        instance.add_run(DagsterRun(job_name="generate_responses", status=DagsterRunStatus.SUCCESS,
                                    tags={"dagster/partition": f"{dataset}|{MODEL}"}))
        done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    assert done["cost"] == {"gpu_seconds": 3.5, "gpu_seconds_per_million_tokens": 250000.0,
                            "hosted_cost_usd": {"openai/gpt-4o": 0.0000325}, "prices_as_of": "2026-07-05"}
