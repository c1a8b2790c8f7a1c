import json

import pytest

from batch_pipeline.generation.quality import EMPTY, REFUSED, STRUCTURED, TRUNCATED, assess, json_expectation

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def _row(index: int, text: str | None, finish_reason: str = "stop") -> dict:
    return {"row_index": index, "custom_id": f"r{index}", "status_code": 400 if text is None else 200,
            "text": text, "finish_reason": None if text is None else finish_reason}


def _checks(report) -> dict:
    return {check.name: check for check in report.checks}


def test_json_expectation_reads_the_requested_format():
    assert json_expectation(json.dumps({"response_format": {"type": "json_object"}})) == {"type": "object"}
    schema_format = {"type": "json_schema", "json_schema": {"name": "n", "schema": SCHEMA}}
    assert json_expectation(json.dumps({"response_format": schema_format})) == SCHEMA
    assert json_expectation(json.dumps({"response_format": {"type": "text"}})) is None
    assert json_expectation(json.dumps({"messages": []})) is None
    responses_format = {"format": {"type": "json_schema", "name": "n", "schema": SCHEMA}}
    assert json_expectation(json.dumps({"input": "x", "text": responses_format})) == SCHEMA


def test_a_clean_cell_passes_every_check():
    report = assess({0: SCHEMA}, [_row(0, '{"n": 1}'), _row(1, "hello")])
    assert all(check.passed for check in report.checks) and not report.blocking_failures
    assert _checks(report)[STRUCTURED.name].of == 1


def test_broken_json_and_schema_violations_fail_the_blocking_check_with_examples():
    rows = [_row(0, '{"n": 1}'), _row(1, '{"n": "one"}'), _row(2, "not json"), _row(3, '{"n": 1', "length")]
    report = assess({0: SCHEMA, 1: SCHEMA, 2: {"type": "object"}, 3: SCHEMA}, rows)
    structured = _checks(report)[STRUCTURED.name]
    assert (structured.passed, structured.count, structured.of) == (False, 2, 3)  # a cut answer is truncation
    assert structured.examples[0].startswith("r1: breaks its schema") and structured.examples[1].startswith("r2: not JSON")
    assert report.blocking_failures == [structured]
    truncated = _checks(report)[TRUNCATED.name]
    assert (truncated.passed, truncated.count, truncated.of, truncated.share) == (False, 1, 4, 0.25)
    assert not truncated.blocking


def test_empty_answers_block_and_refusals_warn():
    rows = [_row(i, "ok") for i in range(17)] + [_row(17, "  "), _row(18, None), _row(19, None)]
    checks = _checks(assess({}, rows))
    assert (checks[EMPTY.name].passed, checks[EMPTY.name].count, checks[EMPTY.name].of) == (False, 1, 18)
    assert (checks[REFUSED.name].passed, checks[REFUSED.name].share) == (False, 0.1)
    assert checks[STRUCTURED.name].passed and checks[STRUCTURED.name].of == 0


@pytest.mark.parametrize("body", [{"response_format": "json_object"}, {"response_format": ["x"]},
                                  {"response_format": {"type": "json_schema", "json_schema": "x"}},
                                  {"text": "plain"}, {"text": {"format": "json"}}])
def test_a_malformed_format_expects_nothing_its_request_was_refused(body):
    assert json_expectation(json.dumps(body)) is None


def test_an_answer_to_a_schema_with_a_dangling_ref_is_not_held_against_the_cell():
    """Such a request is refused at generation; an older cell that answered it must still be assessed."""
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}
    report = assess({0: schema}, [_row(0, '{"a": 1}')])
    assert _checks(report)[STRUCTURED.name].passed
