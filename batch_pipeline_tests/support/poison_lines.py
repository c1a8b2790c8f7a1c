"""Lines that pass a naive shape check but once failed a whole batch (and its warm engine): each must be
refused on its own line, naming the field. Shared by the inbox and API tests."""

import json

from batch_pipeline_tests.support.batches import request_line

DANGLING_SCHEMA = {"type": "object", "properties": {"name": {"$ref": "#/$defs/missing"}}}


def _line(custom_id: str, **body_fields) -> str:
    return json.dumps(request_line(custom_id, **body_fields))  # NaN is written as Python's JSON writes it


# (name, the line's text, the param its error names)
POISON_LINES = [
    ("seed_past_int64", _line("seed", seed=2**70), "body.seed"),
    ("top_k_past_int32", _line("top_k", top_k=10**30), "body.top_k"),
    ("logit_bias_nan", _line("bias-nan", logit_bias={"1": float("nan")}), "body.logit_bias.1"),
    ("logit_bias_out_of_range", _line("bias-big", logit_bias={"1": 101}), "body.logit_bias.1"),
    ("integer_of_4301_digits", _line("digits", max_tokens=1).replace('"max_tokens": 1', '"max_tokens": ' + "9" * 4301),
     None),
    ("dangling_ref_schema", _line("ref", response_format={"type": "json_schema", "json_schema": {
        "name": "person", "schema": DANGLING_SCHEMA}}), "body.response_format.json_schema.schema"),
]
