import json

import pytest

from batch_pipeline.core.settings import InputLimits
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline.protocol.completions import COMPLETIONS_URL
from batch_pipeline_tests.support.batches import request_line, write_batch, write_jsonl
from batch_pipeline_tests.support.models import MODEL
from batch_pipeline_tests.support.poison_lines import POISON_LINES

REGISTERED = {MODEL, "other-model"}


def _scan(path, limits=InputLimits()):
    scan = BatchFileScan(path, REGISTERED, limits)
    rows = list(scan.rows())
    return rows, scan.report()


def test_valid_file_yields_normalized_rows(tmp_path):
    rows, report = _scan(write_batch(tmp_path / "ok.jsonl", 3, temperature=0.5))
    assert report.ok and report.requests == 3 and report.model == MODEL
    assert [r.custom_id for r in rows] == ["req-00000", "req-00001", "req-00002"]
    assert [r.row_index for r in rows] == [0, 1, 2] and [r.line for r in rows] == [1, 2, 3]
    assert json.loads(rows[0].body_json)["temperature"] == 0.5


def test_blank_lines_are_skipped_but_line_numbers_stay_true(tmp_path):
    path = write_jsonl(tmp_path / "gaps.jsonl", [request_line("a"), "", request_line("b")])
    rows, report = _scan(path)
    assert report.ok and [r.line for r in rows] == [1, 3]


def _codes(report):
    return [(e.code, e.line) for e in report.errors]


@pytest.mark.parametrize("line, code, param", [
    ("{not json", "invalid_json_line", None),
    ("[1, 2]", "invalid_json_line", None),
    ({**request_line("x"), "custom_id": ""}, "invalid_custom_id", "custom_id"),
    ({k: v for k, v in request_line("x").items() if k != "custom_id"}, "missing_required_parameter", "custom_id"),
    ({**request_line("x"), "method": "GET"}, "invalid_method", "method"),
    ({**request_line("x"), "url": "/v1/fine_tuning/jobs"}, "invalid_url", "url"),
    ({**request_line("x"), "body": "text"}, "invalid_body", "body"),
    ({**request_line("x"), "body": {"model": MODEL}}, "missing_required_parameter", "body.messages"),
    ({**request_line("x"), "body": {"model": MODEL, "messages": []}}, "invalid_body", "body.messages"),
    ({**request_line("x"), "body": {"messages": [{"role": "user", "content": "hi"}]}},
     "missing_required_parameter", "body.model"),
    ({**request_line("x"), "extra": 1}, "unexpected_parameter", "extra"),
    ({k: v for k, v in request_line("x").items() if k != "url"}, "invalid_url", "url"),
])
def test_each_rule_reports_code_line_and_param(tmp_path, line, code, param):
    path = write_jsonl(tmp_path / "bad.jsonl", [request_line("first"), line])
    rows, report = _scan(path)
    assert not report.ok
    error = report.errors[0]
    assert (error.code, error.line, error.param) == (code, 2, param)
    assert error.message


def _completion_line(custom_id: str, **body_fields) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": COMPLETIONS_URL,
            "body": {"model": MODEL, "prompt": "Once upon a time", **body_fields}}


def test_a_completions_file_keeps_its_endpoint_on_every_row(tmp_path):
    path = write_jsonl(tmp_path / "completions.jsonl", [_completion_line("a"), _completion_line("b", prompt=[1, 2])])
    rows, report = _scan(path)
    assert report.ok and report.endpoint == COMPLETIONS_URL
    assert [row.url for row in rows] == [COMPLETIONS_URL, COMPLETIONS_URL]


@pytest.mark.parametrize("prompt", [[], "", [[]], [1, "a"], {"text": "x"}, [-1], None])
def test_a_completions_prompt_of_the_wrong_type_names_the_field(tmp_path, prompt):
    path = write_jsonl(tmp_path / "bad.jsonl", [_completion_line("a"), _completion_line("b", prompt=prompt)])
    _, report = _scan(path)
    if prompt == "":  # an empty string is a prompt (OpenAI accepts it)
        assert report.ok
        return
    error = report.errors[0]
    assert (error.code, error.line, error.param) == ("invalid_body", 2, "body.prompt")
    assert "string" in error.message


def test_a_completions_line_with_chat_messages_names_the_missing_prompt(tmp_path):
    line = {**request_line("b"), "url": COMPLETIONS_URL}
    _, report = _scan(write_jsonl(tmp_path / "bad.jsonl", [_completion_line("a"), line]))
    assert [(e.code, e.line, e.param) for e in report.errors] == [("missing_required_parameter", 2, "body.prompt")]


def test_one_endpoint_per_file(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [request_line("a"), _completion_line("b"), request_line("c")])
    _, report = _scan(path)
    assert _codes(report) == [("mismatched_endpoint", 2)]
    assert "/v1/chat/completions" in report.errors[0].message


def test_duplicate_custom_id_names_the_first_line(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [request_line("a"), request_line("b"), request_line("a")])
    _, report = _scan(path)
    assert _codes(report) == [("duplicate_custom_id", 3)]
    assert "line 1" in report.errors[0].message


def test_one_model_per_file(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [request_line("a"), request_line("b", model="other-model")])
    _, report = _scan(path)
    assert _codes(report) == [("mismatched_model", 2)]


def test_unregistered_model_lists_registered_names(tmp_path):
    path = write_batch(tmp_path / "unknown.jsonl", 3, model="gpt-4o")
    _, report = _scan(path)
    assert _codes(report) == [("model_not_found", 1)]
    assert f"registered models: {MODEL}, other-model" in report.errors[0].message


def test_every_invalid_line_is_reported(tmp_path):
    path = write_jsonl(tmp_path / "many.jsonl", ["{", request_line("ok"), "{", "{"])
    _, report = _scan(path)
    assert [e.line for e in report.errors] == [1, 3, 4] and report.error_count == 3
    assert "line 3: [invalid_json_line]" in report.summary()


def test_limits_on_lines_and_bytes(tmp_path):
    path = write_batch(tmp_path / "big.jsonl", 5)
    _, report = _scan(path, InputLimits(max_lines=3))
    assert _codes(report) == [("too_many_requests", 4)]
    _, report = _scan(path, InputLimits(max_bytes=100))
    assert _codes(report) == [("file_too_large", None)]


def test_empty_file(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", [""])
    _, report = _scan(path)
    assert _codes(report) == [("empty_file", None)]


def test_invalid_utf8_is_a_line_error(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes(json.dumps(request_line("a")).encode() + b"\n\xff\xfe\n")
    _, report = _scan(path)
    assert _codes(report) == [("invalid_json_line", 2)]


def test_pathological_json_is_a_line_error(tmp_path):
    surrogate = json.dumps(request_line("s")).replace("You are", "\\ud800 You are")
    path = write_jsonl(tmp_path / "odd.jsonl", [request_line("a"), "[" * 200_000, surrogate])
    rows, report = _scan(path)
    assert _codes(report) == [("invalid_json_line", 2), ("invalid_json_line", 3)]
    assert "surrogate" in report.errors[1].message


@pytest.mark.parametrize("name, line, param", POISON_LINES, ids=[case[0] for case in POISON_LINES])
def test_a_poison_line_is_refused_on_its_line_naming_the_field(tmp_path, name, line, param):
    path = write_jsonl(tmp_path / "poison.jsonl", [request_line("first"), line, request_line("last")])
    _, report = _scan(path)
    assert [(error.line, error.param) for error in report.errors] == [(2, param)]
    assert report.errors[0].code in {"invalid_value", "invalid_json_line"} and report.errors[0].message


def test_numbers_inside_openai_limits_pass(tmp_path):
    line = request_line("edge", seed=-(2**63), top_k=2**31 - 1, logit_bias={"1": -100, "2": 100.0},
                        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": {
                            "$defs": {"n": {"type": "string"}}, "properties": {"n": {"$ref": "#/$defs/n"}}}}})
    _, report = _scan(write_jsonl(tmp_path / "edge.jsonl", [line]))
    assert report.ok, report.summary()
