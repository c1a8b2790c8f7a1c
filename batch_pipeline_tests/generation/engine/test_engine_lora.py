"""A LoRA adapter served by its base model's engine: one load answers both, and the answers differ."""

import json

import pytest

from batch_pipeline.protocol.batch import BatchOutputLine
from batch_pipeline.protocol.chat import ChatCompletion
from batch_pipeline_tests.support.batches import materialize_cell, request_line
from batch_pipeline_tests.support.models import ADAPTER, EMBEDDED_MODEL_DIR, MODEL

pytestmark = pytest.mark.engine


def _answers(pipeline, key: str, model: str) -> dict[str, ChatCompletion]:
    output = pipeline.layout.responses(key, model).output
    lines = map(BatchOutputLine.model_validate_json, output.read_text().splitlines())
    return {line.custom_id: ChatCompletion.model_validate(line.response.body) for line in lines}


def test_the_base_model_and_its_adapter_share_one_engine_load(pipeline, lora_adapter):
    pipeline.layout.registry.write_text(f"""
models:
  {MODEL}:
    engine: {{model: {EMBEDDED_MODEL_DIR}, dtype: bfloat16, max_model_len: 2048, enforce_eager: true}}
    sampling: {{max_tokens: 12, temperature: 0.0}}
    adapters:
      {ADAPTER}: {{path: {lora_adapter}}}
""")
    key = "lora-0123456789"
    lines = [request_line(f"req-{i:03d}") for i in range(12)]
    result = materialize_cell(pipeline, key, lines, models=(MODEL, ADAPTER))
    metadata = result.asset_materializations_for_node("batch_responses")[0].metadata
    assert metadata["engine_reused"].value is True  # the adapter ran on the engine the base model loaded
    base, adapted = _answers(pipeline, key, MODEL), _answers(pipeline, key, ADAPTER)
    assert set(base) == set(adapted) == {f"req-{i:03d}" for i in range(12)}
    assert {body.model for body in adapted.values()} == {ADAPTER}
    differing = [cid for cid in base if base[cid].choices[0].message.content != adapted[cid].choices[0].message.content]
    assert len(differing) >= 10, json.dumps({cid: adapted[cid].choices[0].message.content for cid in adapted})
