"""/v1/embeddings on the real pooling engine (all-MiniLM-L6-v2 on vLLM), in the run and through the engine
host (the default path)."""

import base64
import json
import struct

import pyarrow.parquet as pq
import pytest
from openai.types import CreateEmbeddingResponse

from batch_pipeline.comparison.agreement import cosine
from batch_pipeline.generation.quality import read_quality
from batch_pipeline.protocol.batch import BatchOutputLine
from batch_pipeline.protocol.embeddings import EMBEDDINGS_URL
from batch_pipeline_tests.support.batches import materialize_cell
from batch_pipeline_tests.support.models import EMBEDDING_ENTRY, EMBEDDING_MODEL, PROJECT_ROOT, TEST_REGISTRY

pytestmark = pytest.mark.engine


def _line(custom_id: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS_URL, "body": {"model": EMBEDDING_MODEL, **body}}


def _cell(pipeline, key: str, lines: list[dict]):
    (pipeline.layout.root / "registry.yaml").write_text(TEST_REGISTRY + EMBEDDING_ENTRY)
    result = materialize_cell(pipeline, key, lines, models=(EMBEDDING_MODEL,))
    paths = pipeline.layout.responses(key, EMBEDDING_MODEL)
    read = lambda path: {line.custom_id: line for line in map(BatchOutputLine.model_validate_json,  # noqa: E731
                                                                path.read_text().splitlines())}
    return read(paths.output), read(paths.errors), paths, result


@pytest.fixture(params=["in_process", pytest.param("server", marks=pytest.mark.engine_server)])
def any_pipeline(request):
    return request.getfixturevalue("pipeline" if request.param == "in_process" else "server_pipeline")


def test_embeddings_come_in_openai_shape_and_place_similar_texts_together(any_pipeline):
    lines = [
        _line("refund", input="How do I get a refund for my order?"),
        _line("pair", input=["I want my money back", "The weather is sunny today"]),
        _line("ids", input=[101, 7592, 2088, 102]),
        _line("base64", input="How do I get a refund for my order?", encoding_format="base64"),
        _line("dimensions", input="hello", dimensions=64),
        _line("too-long", input="word " * 600),
        _line("unknown-field", input="hello", temperature=0.5),
    ]
    outputs, errors, paths, result = _cell(any_pipeline, "embeddings-0123456", lines)
    assert set(outputs) == {"refund", "pair", "ids", "base64"}
    # The openai client decodes base64 itself before it builds its model.
    bodies = {cid: CreateEmbeddingResponse.model_validate(line.response.body) for cid, line in outputs.items()
              if cid != "base64"}
    refund = bodies["refund"].data[0].embedding
    money_back, weather = (item.embedding for item in bodies["pair"].data)
    assert len(refund) == 384 and abs(cosine(refund, refund) - 1) < 1e-6
    assert cosine(refund, money_back) > cosine(refund, weather) + 0.2
    assert bodies["pair"].usage.prompt_tokens == bodies["pair"].usage.total_tokens > 8
    packed = outputs["base64"].response.body["data"][0]["embedding"]
    unpacked = struct.unpack("<384f", base64.b64decode(packed))
    assert cosine(list(unpacked), refund) > 0.9999
    assert {cid: line.response.body["error"]["param"] for cid, line in errors.items()} == {
        "dimensions": "dimensions", "too-long": "input", "unknown-field": "temperature"}
    chunk = next(paths.chunks.glob("chunk-*.parquet"))
    assert str(pq.read_schema(chunk).field("embedding").type) == "fixed_size_list<element: float>[384]"
    assert not read_quality(paths.quality).blocking_failures
    assert result.asset_materializations_for_node("batch_responses")[0].metadata["succeeded"].value == 4


def test_the_shipped_example_runs_clean(pipeline):
    lines = [json.loads(line) for line in (PROJECT_ROOT / "data" / "examples" / "embeddings.jsonl").read_text().splitlines()]
    outputs, errors, paths, _ = _cell(pipeline, "example-embeddings-0123456", lines)
    assert not errors and len(outputs) == len(lines)
    assert not read_quality(paths.quality).blocking_failures
