"""The comparison and curation assets materialized on real partitions of a temporary instance, from
chunks written by ChunkStore; and the automation that keeps them in step with finished models."""

import base64
import json

import pyarrow.parquet as pq
import pytest
from dagster import AssetKey, Definitions, evaluate_automation_conditions, materialize

from batch_pipeline.comparison.assets import model_comparison
from batch_pipeline.core.partitions import MODELS
from batch_pipeline.core.registry import RegistryError, parse_registry
from batch_pipeline.curation.assets import curated_dataset, curation_export
from batch_pipeline.curation.review import ReviewError
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.generation.quality import assess
from batch_pipeline.tools.curate import curate
from batch_pipeline_tests.support.models import MODEL, TEST_REGISTRY
from batch_pipeline_tests.support.results import finished_model, result, validated_dataset

KEY = "compare-0123456789"
OTHER = "other-model"
PRICED = TEST_REGISTRY + """    price: {input_per_million: 0.1, output_per_million: 0.4}
  other-model:
    engine: {model: somewhere}
  never-run:
    engine: {model: somewhere}
"""


@pytest.fixture
def two_models(instance, pipeline):
    """SmolLM2 answered 4 of 5 requests, other-model all 5; never-run is registered but has no results."""
    pipeline.layout.registry.write_text(PRICED)
    validated_dataset(instance, pipeline, KEY, 5)
    instance.add_dynamic_partitions(MODELS.name, ["never-run"])
    finished_model(instance, pipeline, KEY, MODEL, [
        result(0, "Paris.", 2), result(1, "Waves  roll in", 3), result(2, None),
        result(3, "apple, cherry", 16, "length"), result(4, "glad", 1)], tokens_per_s=120.0)
    finished_model(instance, pipeline, KEY, OTHER, [
        result(0, "paris.", 2), result(1, "The sea is calm", 4), result(2, "Recursion is...", 5),
        result(3, "apple, cherry", 16, "length"), result(4, "joyful", 1)], tokens_per_s=80.0,
        generation_seconds=4.0, engine_start_seconds=10.0)
    return instance


def _materialize(assets, instance, pipeline):
    return materialize(assets, partition_key=KEY, instance=instance, resources={"pipeline": pipeline})


def test_comparison_puts_finished_models_side_by_side_with_figures(two_models, pipeline):
    outcome = _materialize([model_comparison], two_models, pipeline)
    metadata = outcome.asset_materializations_for_node("model_comparison")[0].metadata
    paths = pipeline.layout.dataset(KEY)

    table = pq.read_table(paths.comparison)
    assert table.column_names[:3] == ["custom_id", "prompt", "messages_json"]
    assert {f"output:{MODEL}", f"error:{MODEL}", f"completion_tokens:{OTHER}", f"finish_reason:{OTHER}"} <= set(table.column_names)
    assert not any("never-run" in name for name in table.column_names)
    rows = table.to_pylist()
    assert [r["custom_id"] for r in rows] == [f"req-{i:05d}" for i in range(5)]
    assert rows[0]["prompt"].startswith("system: You are a concise assistant.\nuser: ")
    assert (rows[2][f"output:{MODEL}"], rows[2][f"error:{MODEL}"]) == (None, "bad request")
    assert (rows[3][f"output:{OTHER}"], rows[3][f"finish_reason:{OTHER}"]) == ("apple, cherry", "length")

    assert metadata["models"].value == [MODEL, OTHER] and metadata["rows"].value == 5
    summary = {r.data["model"]: r.data for r in metadata["summary"].value.records}
    smol, other = summary[MODEL], summary[OTHER]
    assert (smol["succeeded"], smol["failed"], smol["stopped_at_max_tokens"]) == (4, 1, 1)
    assert smol["mean_completion_tokens"] == 5.5 and smol["p50_completion_tokens"] == 2.5
    assert smol["generated_tokens_per_s"] == 120.0 and smol["gpu_seconds"] == 7.0
    assert smol["hosted_cost_usd"] == pytest.approx((40 * 0.1 + 22 * 0.4) / 1e6)
    assert (other["succeeded"], other["gpu_seconds"], other["hosted_cost_usd"]) == (5, 14.0, None)

    [pair] = metadata["agreement"].value.records
    assert pair.data["compared"] == 4
    assert pair.data["exact_match_rate"] == 0.25  # only "apple, cherry" is identical as written
    assert pair.data["mean_similarity"] == 0.5  # "Paris." also matches once case is ignored

    png = paths.comparison_chart.read_bytes()
    assert png.startswith(b"\x89PNG")
    assert metadata["chart"].value == f"![{KEY}: answer lengths and throughput](data:image/png;base64,{base64.b64encode(png).decode()})"
    assert metadata["chart_file"].value == str(paths.comparison_chart)
    assert "| req-00002 |" in metadata["preview"].value and "*bad request*" in metadata["preview"].value


def test_comparison_without_finished_models_fails_clearly(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 2)
    with pytest.raises(Exception, match="no model has finished it yet"):
        _materialize([model_comparison], instance, pipeline)


def test_export_review_and_curate_round_trip(two_models, pipeline, tmp_path):
    _materialize([model_comparison], two_models, pipeline)
    outcome = _materialize([curation_export], two_models, pipeline)
    assert outcome.asset_materializations_for_node("curation_export")[0].metadata["rows"].value == 5
    paths = pipeline.layout.dataset(KEY)
    export = pq.read_table(paths.review_export)
    assert export.column_names == ["custom_id", "prompt", f"output:{MODEL}", f"output:{OTHER}",
                                   "chosen_model", "rating", "keep", "notes"]
    assert paths.review_export_csv.exists()

    frame = export.to_pandas()
    frame.loc[0, ["chosen_model", "keep", "rating"]] = [OTHER, True, 5]
    frame.loc[2, ["chosen_model", "keep"]] = [MODEL, True]  # SmolLM2 failed this one
    bad = tmp_path / "bad.csv"
    frame.to_csv(bad, index=False)
    with pytest.raises(ReviewError) as caught:
        curate(two_models, pipeline, KEY, bad)
    assert caught.value.problems == [
        f"row 3, column output:{MODEL}: empty, so there is no answer to keep (that model failed this request)"]
    assert not paths.reviewed.exists() and not paths.finetune.exists()

    frame.loc[2, "chosen_model"] = OTHER
    frame.loc[4, "keep"] = False
    good = tmp_path / "good.csv"
    frame.to_csv(good, index=False)
    message = curate(two_models, pipeline, KEY, good)
    assert message.startswith(f"{KEY}: 5 reviewed rows accepted, 2 kept -> ")
    lines = [json.loads(line) for line in paths.finetune.read_text().splitlines()]
    assert [line["messages"][-1] for line in lines] == [{"role": "assistant", "content": "paris."},
                                                        {"role": "assistant", "content": "Recursion is..."}]
    assert [m["role"] for m in lines[0]["messages"]] == ["system", "user", "assistant"]
    assert pq.read_table(paths.curated).column("chosen_model").to_pylist() == [OTHER, OTHER]
    materialization = two_models.get_latest_materialization_event(AssetKey("curated_dataset"))
    assert materialization.asset_materialization.partition == KEY

    # A later export keeps the accepted review.
    _materialize([curation_export], two_models, pipeline)
    assert pq.read_table(paths.review_export).column("keep").to_pylist() == [True, None, True, None, False]


def test_export_is_refused_while_a_cell_failed_a_blocking_quality_check(two_models, pipeline):
    _materialize([model_comparison], two_models, pipeline)
    rows = [{"row_index": i, "custom_id": f"req-{i:05d}", "status_code": 200, "text": "", "finish_reason": "stop"}
            for i in range(5)]
    report = assess({}, rows)
    pipeline.layout.responses(KEY, OTHER).quality.write_text(report.model_dump_json())
    with pytest.raises(Exception, match=f"{OTHER}: answers_not_empty failed \\(5 of 5; e.g. req-00000"):
        _materialize([curation_export], two_models, pipeline)
    assert not pipeline.layout.dataset(KEY).review_export.exists()


def test_curated_dataset_without_a_review_says_how_to_make_one(two_models, pipeline):
    with pytest.raises(Exception, match="batch-pipeline curate --dataset"):
        _materialize([curated_dataset], two_models, pipeline)


def test_comparison_is_requested_once_any_model_finishes(instance, pipeline):
    pipeline.layout.registry.write_text(PRICED)
    validated_dataset(instance, pipeline, KEY, 3)
    instance.add_dynamic_partitions(MODELS.name, [MODEL, OTHER, "never-run"])
    assets = Definitions(assets=[batch_responses, model_comparison, curation_export], resources={"pipeline": pipeline})
    first = evaluate_automation_conditions(defs=assets, instance=instance)
    second = evaluate_automation_conditions(defs=assets, instance=instance, cursor=first.cursor)
    assert second.total_requested == 0  # no model has results yet: nothing to compare

    finished_model(instance, pipeline, KEY, MODEL, [result(i, "ok", 1) for i in range(3)])
    third = evaluate_automation_conditions(defs=assets, instance=instance, cursor=second.cursor)
    # Two of three models have no results: the comparison must not wait for them.
    assert third.get_requested_partitions(model_comparison.key) == {KEY}
    assert third.get_requested_partitions(curation_export.key) == {KEY}
    assert third.get_num_requested(batch_responses.key) == 0

    _materialize([model_comparison, curation_export], instance, pipeline)
    fourth = evaluate_automation_conditions(defs=assets, instance=instance, cursor=third.cursor)
    assert fourth.total_requested == 0
    finished_model(instance, pipeline, KEY, OTHER, [result(i, "fine", 1) for i in range(3)])
    fifth = evaluate_automation_conditions(defs=assets, instance=instance, cursor=fourth.cursor)
    assert fifth.get_requested_partitions(model_comparison.key) == {KEY}


def test_registry_price_is_optional_and_checked():
    assert parse_registry(PRICED, "r").models[MODEL].price.output_per_million == 0.4
    assert parse_registry(PRICED, "r").models[OTHER].price is None
    with pytest.raises(RegistryError, match="model 'other-model', field 'price.input_per_million'"):
        parse_registry(PRICED.replace("engine: {model: somewhere}\n  never-run",
                                      "engine: {model: somewhere}\n    price: {input_per_million: -1, output_per_million: 1}\n  never-run", 1), "r")
