"""The comparison's pure parts: prompt text, per-model statistics, agreement, metadata tables, chart."""

import json

import pytest
from dagster import TableMetadataValue

from batch_pipeline.comparison.agreement import PairAgreement, pairwise_agreement, similarity
from batch_pipeline.comparison.chart import comparison_chart
from batch_pipeline.comparison.metadata import records_table
from batch_pipeline.comparison.prompts import prompt_text, request_messages
from batch_pipeline.comparison.side_by_side import column, models_in
from batch_pipeline.comparison.stats import ModelSummary, RunFigures, summarize
from batch_pipeline.core.registry import Price
from batch_pipeline.generation.quality import assess
from batch_pipeline.intake.validation import RequestRow


def _row(tokens: int | None, finish_reason: str = "stop", prompt_tokens: int = 10) -> dict:
    if tokens is None:
        return {"status_code": 400, "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": None}
    return {"status_code": 200, "prompt_tokens": prompt_tokens, "completion_tokens": tokens, "finish_reason": finish_reason}


def test_summary_counts_outcomes_lengths_speed_and_hosted_cost():
    rows = [_row(t) for t in range(1, 21)] + [_row(16, "length"), _row(None)]
    figures = RunFigures.from_metadata({"generated_tokens_per_s": 250.0, "generation_seconds": 8.0,
                                        "engine_start_seconds": 30.5, "rows": 22})
    summary = summarize("m", rows, figures, Price(input_per_million=0.075, output_per_million=0.30))
    assert (summary.succeeded, summary.failed, summary.stopped_at_max_tokens) == (21, 1, 1)
    assert summary.mean_completion_tokens == pytest.approx(round((210 + 16) / 21, 1))
    assert summary.p50_completion_tokens == 11.0
    assert summary.p95_completion_tokens == 19.0
    assert (summary.prompt_tokens, summary.completion_tokens) == (210, 226)
    assert summary.generated_tokens_per_s == 250.0 and summary.gpu_seconds == 38.5
    assert summary.hosted_cost_usd == pytest.approx((210 * 0.075 + 226 * 0.30) / 1e6)


def test_summary_carries_the_share_of_json_answers_that_validate():
    rows = [{"row_index": i, "custom_id": f"r{i}", "status_code": 200, "text": text, "finish_reason": "stop"}
            for i, text in enumerate(['{"a": 1}', '{"a": 2}', '{"a": 3}', "not json", "free text"])]
    quality = assess({i: {"type": "object"} for i in range(4)}, rows)
    assert summarize("m", [_row(3)], RunFigures(), None, quality).json_valid_rate == 0.75
    assert summarize("m", [_row(3)], RunFigures(), None, assess({}, rows)).json_valid_rate is None
    assert summarize("m", [_row(3)], RunFigures(), None).json_valid_rate is None


def test_summary_of_a_model_that_answered_nothing_and_ran_no_engine():
    summary = summarize("m", [_row(None)], RunFigures.from_metadata({"generated_tokens_per_s": 0.0}), None)
    assert summary.succeeded == 0 and summary.failed == 1
    assert summary.mean_completion_tokens is summary.p95_completion_tokens is None
    assert summary.generated_tokens_per_s is None  # a run that only resumed chunks measured nothing
    assert summary.gpu_seconds is None and summary.hosted_cost_usd is None


def test_similarity_forgives_case_and_spacing_only():
    assert similarity("Paris is  the capital.", "paris is the\ncapital.") == 1.0
    assert similarity("", "  ") == 1.0
    assert similarity("the capital is Paris", "the capital is Rome") == pytest.approx(0.75)
    assert similarity("yes", "no") == 0.0


def test_pairwise_agreement_compares_only_requests_both_models_answered():
    outputs = {
        "a": {"q1": "Paris.", "q2": "Blue", "q3": None, "q4": "x y"},
        "b": {"q1": "Paris.", "q2": "blue", "q3": "Rome", "q4": None},
        "c": {"q1": None, "q2": None, "q3": None, "q4": None},
    }
    ab, ac, bc = pairwise_agreement(outputs)
    assert (ab.model_a, ab.model_b, ab.compared) == ("a", "b", 2)
    assert ab.exact_match_rate == 0.5 and ab.mean_similarity == 1.0
    assert ac == PairAgreement(model_a="a", model_b="c", compared=0, exact_match_rate=None, mean_similarity=None)
    assert (bc.model_a, bc.model_b) == ("b", "c")


def test_prompt_text_keeps_every_role_and_names_non_text_parts():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": "x"}}]}]
    assert prompt_text(messages) == "system: Be brief.\nuser: What is this? [image_url]"


def test_model_columns_round_trip_names_with_dots_and_dashes():
    names = ["custom_id", "prompt", column("output", "gemini-1.5.flash_x"), column("error", "gemini-1.5.flash_x"),
             column("output", "b")]
    assert models_in(names) == ["gemini-1.5.flash_x", "b"]


def test_records_table_types_columns_from_the_model():
    summary = summarize("m", [_row(3)], RunFigures(), None)
    table = records_table(ModelSummary, [summary])
    assert isinstance(table, TableMetadataValue)
    types = {c.name: c.type for c in table.schema.columns}
    assert types["model"] == "string" and types["succeeded"] == "int" and types["hosted_cost_usd"] == "float"
    assert table.records[0].data["succeeded"] == 1


def test_chart_is_a_png_even_for_a_model_without_answers():
    summaries = [summarize("a", [_row(4), _row(9)], RunFigures(generated_tokens_per_s=80.0), None),
                 summarize("b", [_row(None)], RunFigures(), None)]
    png = comparison_chart({"a": [4, 9], "b": []}, summaries)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000


def test_every_endpoints_request_reads_as_a_conversation():
    def row(url, body):
        return RequestRow(row_index=0, line=1, custom_id="c", body_json=json.dumps(body), url=url)

    chat = {"messages": [{"role": "user", "content": "hi"}]}
    assert request_messages(row("/v1/chat/completions", chat)) == chat["messages"]
    assert request_messages(row("/v1/completions", {"prompt": ["Once", [1, 2]]})) == [
        {"role": "user", "content": "Once\n[token ids [1, 2]]"}]
    assert request_messages(row("/v1/responses", {"model": "m", "input": "Why?", "instructions": "Be brief."})) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    refused = row("/v1/responses", {"model": "m", "input": "Why?", "tools": [{}]})
    assert request_messages(refused) == [{"role": "user", "content": '"Why?"'}]
