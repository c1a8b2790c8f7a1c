"""The real path: vLLM's CPU build serving the embedded model, through Dagster materializations."""

import json

import pytest

from batch_pipeline.generation.results import tally_chunk
from batch_pipeline.protocol.batch import BatchOutputLine
from batch_pipeline.protocol.chat import ChatCompletion
from batch_pipeline_tests.support.batches import materialize_cell, request_line
from batch_pipeline_tests.support.models import MODEL

pytestmark = pytest.mark.engine

KEY = "engine-0123456789"


def _batch(count: int) -> list[dict]:
    lines = [request_line(f"req-{i:05d}") for i in range(count)]
    for line in lines[::7]:  # seeded sampling mixed into full batches (a vLLM CPU crash once)
        line["body"].update(temperature=0.9, seed=11)
    lines[3]["body"]["n"] = 2
    lines[3]["body"]["temperature"] = 0.8
    lines[3]["body"]["seed"] = 7
    lines[5]["body"]["tools"] = [{"type": "function", "function": {"name": "f"}}]
    lines[7]["body"]["messages"][1]["content"] = "word " * 3000
    lines[9]["body"]["max_tokens"] = 4
    lines[11]["body"]["logit_bias"] = {"99999999": 5}  # refused by vLLM itself: not in the vocabulary
    return lines


@pytest.mark.parametrize("engine", ["in_process", pytest.param("server", marks=pytest.mark.engine_server)])
def test_materializes_250_requests_in_chunks(engine, request):
    pipeline = request.getfixturevalue("pipeline" if engine == "in_process" else "server_pipeline")
    result = materialize_cell(pipeline, KEY, _batch(250))
    metadata = result.asset_materializations_for_node("batch_responses")[0].metadata
    paths = pipeline.layout.responses(KEY, MODEL)
    # Every 100 rows, or sooner when a result waited chunk_seconds: each chunk holds at most 100.
    chunks = sorted(paths.chunks.iterdir())
    assert [p.name for p in chunks] == [f"chunk-{i:05d}.parquet" for i in range(len(chunks))]
    assert len(chunks) >= 3 and all(tally_chunk(p).rows <= 100 for p in chunks)

    outputs = [BatchOutputLine.model_validate_json(l) for l in paths.output.read_text().splitlines()]
    errors = [BatchOutputLine.model_validate_json(l) for l in paths.errors.read_text().splitlines()]
    ids = [line.custom_id for line in outputs + errors]
    assert sorted(ids) == [f"req-{i:05d}" for i in range(250)]

    assert {e.custom_id: e.response.body["error"]["code"] for e in errors} == {
        "req-00005": "unsupported_parameter", "req-00007": "context_length_exceeded",
        "req-00011": "invalid_value"}
    assert all(e.response.status_code == 400 for e in errors)

    completions = {line.custom_id: ChatCompletion.model_validate(line.response.body) for line in outputs}
    for completion in completions.values():
        assert completion.model == MODEL
        assert all(c.finish_reason in {"stop", "length"} for c in completion.choices)
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        assert 0 < completion.usage.completion_tokens <= 16 * len(completion.choices)
    assert len(completions["req-00003"].choices) == 2
    assert completions["req-00009"].usage.completion_tokens <= 4
    assert any(c.choices[0].message.content.strip() for c in completions.values())

    assert metadata["rows"].value == 250
    assert (metadata["succeeded"].value, metadata["failed"].value) == (247, 3)
    assert metadata["completion_tokens"].value == sum(c.usage.completion_tokens for c in completions.values())
    assert metadata["prompt_tokens"].value == sum(c.usage.prompt_tokens for c in completions.values())
    assert metadata["chunks"].value == len(chunks) and metadata["chunks_resumed"].value == 0
    assert metadata["generated_tokens_per_s"].value > 0
    assert metadata["engine"].value == engine
    # Its cost: this run's engine time on one accelerator, and the cell's tokens at hosted batch prices.
    assert metadata["gpu_seconds"].value >= metadata["generation_seconds"].value > 0
    assert metadata["hosted_cost_usd"].value["openai/gpt-4o-mini"] > 0 and metadata["hosted_prices_as_of"].value
    assert "| req-" in metadata["preview"].value
    assert json.loads(paths.output.read_text().splitlines()[0])["response"]["body"]["object"] == "chat.completion"
