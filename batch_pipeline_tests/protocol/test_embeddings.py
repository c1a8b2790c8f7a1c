"""The embeddings endpoint without an engine: input checks, request fields, the answer's format, the vector
column, quality and agreement."""

import base64
import json
import math
import struct

import pyarrow.parquet as pq
import pytest
from openai.types import CreateEmbeddingResponse

from batch_pipeline.comparison.agreement import pairwise_agreement
from batch_pipeline.comparison.prompts import request_messages
from batch_pipeline.core.registry import parse_registry, resolve_engine_kwargs
from batch_pipeline.core.settings import InputLimits
from batch_pipeline.generation.chunks import ChunkStore
from batch_pipeline.generation.engine.vllm.pooling import pooling_kwargs
from batch_pipeline.generation.engine.vllm.prompts import prompts
from batch_pipeline.generation.quality import EMPTY, assess
from batch_pipeline.generation.results import result_row
from batch_pipeline.intake.validation import BatchFileScan, RequestRow
from batch_pipeline.protocol.answers import Completion, EngineRequest, EngineResult
from batch_pipeline.protocol.embeddings import EMBEDDINGS_URL
from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline_tests.support.batches import request_line, write_jsonl
from batch_pipeline_tests.support.models import MODEL

EMBEDDER = "minilm"
REGISTRY = parse_registry(f"""
models:
  {MODEL}:
    engine: {{model: models/smol}}
  {EMBEDDER}:
    task: embed
    engine: {{model: models/minilm}}
""", "test")


def _line(custom_id: str, model: str = EMBEDDER, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": EMBEDDINGS_URL, "body": {"model": model, **body}}


def _scan(tmp_path, lines):
    scan = BatchFileScan(write_jsonl(tmp_path / "in.jsonl", lines), set(REGISTRY.names()), InputLimits(),
                         REGISTRY.embedding_models())
    rows = list(scan.rows())
    return rows, scan.report()


def test_registry_marks_embedding_models_and_loads_them_with_the_pooling_runner(tmp_path):
    assert REGISTRY.embedding_models() == {EMBEDDER}
    assert resolve_engine_kwargs(REGISTRY.models[EMBEDDER], tmp_path)["runner"] == "pooling"
    assert "runner" not in resolve_engine_kwargs(REGISTRY.models[MODEL], tmp_path)


def test_every_input_shape_is_accepted(tmp_path):
    lines = [_line("text", input="hello"), _line("texts", input=["a", "b"]), _line("ids", input=[101, 7592, 102]),
             _line("id-lists", input=[[101, 102], [101, 7592, 102]])]
    rows, report = _scan(tmp_path, lines)
    assert report.ok and report.endpoint == EMBEDDINGS_URL and [r.url for r in rows] == [EMBEDDINGS_URL] * 4


@pytest.mark.parametrize("bad_input", ["", [""], [], [[]], 7, [1.5], None])
def test_empty_or_malformed_input_names_line_and_field(tmp_path, bad_input):
    _, report = _scan(tmp_path, [_line("ok", input="fine"), _line("bad", input=bad_input)])
    (error,) = report.errors
    assert (error.line, error.param) == (2, "body.input")


def test_an_embedding_file_needs_an_embedding_model_and_the_other_way_round(tmp_path):
    _, report = _scan(tmp_path, [_line("a", model=MODEL, input="hello")])
    (error,) = report.errors
    assert (error.code, error.line, error.param) == ("invalid_model_for_endpoint", 1, "body.model")
    assert f"'{MODEL}' is a text generation model" in error.message and EMBEDDER in error.message
    _, report = _scan(tmp_path, [request_line("b", model=EMBEDDER)])
    (error,) = report.errors
    assert error.code == "invalid_model_for_endpoint" and "is an embedding model" in error.message


@pytest.mark.parametrize("body, param", [
    ({"encoding_format": "int8"}, "encoding_format"),
    ({"dimensions": 0}, "dimensions"),
    ({"temperature": 0.5}, "temperature"),
])
def test_unsupported_fields_are_refused_by_name(body, param):
    with pytest.raises(UnsupportedRequest) as refused:
        pooling_kwargs({"model": EMBEDDER, "input": "x", **body})
    assert refused.value.param == param


def test_pooling_parameters_carry_dimensions_only_when_asked():
    assert pooling_kwargs({"model": EMBEDDER, "input": "x", "encoding_format": "base64"}) == {"task": "embed"}
    assert pooling_kwargs({"model": EMBEDDER, "input": "x", "dimensions": 64}) == {"task": "embed", "dimensions": 64}


class _Tokenizer:
    """Stands in for the model's tokenizer: one id per word, wrapped in [CLS] ... [SEP]."""

    def encode(self, text):
        return [101, *(1000 + len(word) for word in text.split()), 102]

    def decode(self, ids):
        return " ".join(f"t{token}" for token in ids)

    def __len__(self):
        return 30522


def test_every_input_becomes_one_prompt_and_one_that_is_too_long_names_input():
    request = EngineRequest(0, "q", {"input": ["one two", [101, 5, 102]]}, EMBEDDINGS_URL)
    assert [p.ids for p in prompts(_Tokenizer(), request, max_model_len=8)] == [[101, 1003, 1003, 102], [101, 5, 102]]
    # An embedding needs no room for an answer: exactly the context length fits.
    assert prompts(_Tokenizer(), EngineRequest(0, "q", {"input": "a b c"}, EMBEDDINGS_URL), max_model_len=5)
    with pytest.raises(UnsupportedRequest) as refused:
        prompts(_Tokenizer(), EngineRequest(0, "q", {"input": "a b c d"}, EMBEDDINGS_URL), max_model_len=5)
    assert (refused.value.param, refused.value.code) == ("input", "context_length_exceeded")


def _result(vectors, row_index=0, **body) -> EngineResult:
    request = EngineRequest(row_index, f"r{row_index}", {"model": EMBEDDER, "input": "x", **body}, EMBEDDINGS_URL)
    return EngineResult(request=request, prompt_tokens=7,
                        completions=[Completion(text="", finish_reason="stop", tokens=0, embedding=v) for v in vectors])


def test_answers_come_in_openai_embeddings_shape_as_floats_or_base64():
    vectors = [[0.6, 0.8, 0.0], [0.0, -1.0, 0.0]]
    floats = json.loads(result_row(_result(vectors), EMBEDDER).body_json)
    parsed = CreateEmbeddingResponse.model_validate(floats)
    assert [d.embedding for d in parsed.data] == vectors and [d.index for d in parsed.data] == [0, 1]
    assert parsed.usage.prompt_tokens == parsed.usage.total_tokens == 7 and parsed.model == EMBEDDER
    packed = json.loads(result_row(_result(vectors, encoding_format="base64"), EMBEDDER).body_json)
    decoded = [struct.unpack("<3f", base64.b64decode(d["embedding"])) for d in packed["data"]]
    assert [[round(x, 6) for x in v] for v in decoded] == vectors


def test_chunks_keep_vectors_as_a_fixed_size_float32_column(tmp_path):
    store = ChunkStore(tmp_path / "chunks")
    store.prepare()
    rows = [result_row(_result([[0.6, 0.8, 0.0]], row_index=i), EMBEDDER) for i in range(3)]
    rows.append(result_row(EngineResult(request=_result([]).request, error=UnsupportedRequest("no", "input")), EMBEDDER))
    path = store.write(0, rows)
    assert str(pq.read_schema(path).field("embedding").type) == "fixed_size_list<element: float>[3]"
    read = list(store.iter_rows(["row_index", "text", "embedding"]))
    assert [r["embedding"] for r in read] == [[pytest.approx(0.6), pytest.approx(0.8), 0.0]] * 3 + [None]
    assert all(r["text"] is None for r in read)


def test_a_zero_or_broken_vector_counts_as_an_empty_answer():
    rows = [{"row_index": i, "custom_id": f"r{i}", "status_code": 200, "text": None, "finish_reason": None,
             "embedding": vector} for i, vector in enumerate([[0.6, 0.8], [0.0, 0.0], [math.nan, 1.0]])]
    (empty,) = [check for check in assess({}, rows).checks if check.name == EMPTY.name]
    assert (empty.count, empty.of, empty.passed) == (2, 3, False) and empty.examples == ["r1", "r2"]


def test_agreement_between_embedding_models_is_their_mean_cosine():
    same, rotated = [1.0, 0.0], [0.6, 0.8]
    (pair,) = pairwise_agreement({"a": {"x": same, "y": same, "z": None}, "b": {"x": same, "y": rotated, "z": same}})
    assert (pair.compared, pair.mean_cosine, pair.exact_match_rate) == (2, 0.8, None)
    (other_sizes,) = pairwise_agreement({"a": {"x": [1.0, 0.0]}, "c": {"x": [1.0, 0.0, 0.0]}})
    assert (other_sizes.compared, other_sizes.mean_cosine) == (0, None)


def test_comparison_shows_the_inputs_as_the_prompt():
    row = RequestRow(row_index=0, line=1, custom_id="q", url=EMBEDDINGS_URL,
                     body_json=json.dumps({"model": EMBEDDER, "input": ["first text", [101, 102]]}))
    assert request_messages(row) == [{"role": "user", "content": "first text\n[token ids [101, 102]]"}]
