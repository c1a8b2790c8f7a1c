"""Prefix order and deduplication of what an engine is fed, without an engine: the answers a batch gets
are the same as in file order, each custom_id once, and copies cost no generation."""

import json
import random

import pytest

from batch_pipeline.core.registry import SamplingDefaults
from batch_pipeline.core.settings import InputLimits
from batch_pipeline.generation.checkpointing import generate_responses
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore
from batch_pipeline.generation.feed import DeduplicatingEngine, prefix_key, prefix_ordered
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline.protocol.answers import EngineRequest
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline.protocol.embeddings import EMBEDDINGS_URL
from batch_pipeline_tests.support.batches import write_jsonl
from batch_pipeline_tests.support.fake_engine import ScriptedEngine
from batch_pipeline_tests.support.models import MODEL

GREEDY = SamplingDefaults(temperature=0.0)


def _chat(row: int, system: str, question: str, **fields) -> EngineRequest:
    body = {"model": MODEL, "messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": question}], **fields}
    return EngineRequest(row, f"r{row}", body, CHAT_COMPLETIONS_URL)


def _shared_prompt_rows(count: int, prompts: int, seed: int = 3) -> list[EngineRequest]:
    rng = random.Random(seed)
    systems = [f"You are assistant {p}. " + "Follow these long instructions carefully. " * 40 for p in range(prompts)]
    return [_chat(row, rng.choice(systems), f"question {row}") for row in range(count)]


def _runs_of_same_system(requests: list[EngineRequest]) -> int:
    systems = [r.body["messages"][0]["content"] for r in requests]
    return 1 + sum(a != b for a, b in zip(systems, systems[1:]))


def test_rows_sharing_a_system_prompt_are_fed_side_by_side():
    rows = _shared_prompt_rows(300, 20)
    assert _runs_of_same_system(rows) > 200  # shuffled: the prompt changes almost every row
    ordered = list(prefix_ordered(iter(rows), window=None))
    assert sorted(r.row_index for r in ordered) == list(range(300))
    assert _runs_of_same_system(ordered) == 20


def test_a_window_bounds_what_is_reordered_and_loses_no_row():
    rows = _shared_prompt_rows(300, 20)
    ordered = list(prefix_ordered(iter(rows), window=100))
    assert sorted(r.row_index for r in ordered) == list(range(300))
    # Each window is ordered on its own: rows never move across a window's edge.
    for start in range(0, 300, 100):
        assert {r.row_index for r in ordered[start:start + 100]} == set(range(start, start + 100))
        assert _runs_of_same_system(ordered[start:start + 100]) <= 20


def test_rows_sharing_a_deeper_prefix_stay_together():
    system = "Shared instructions. " * 60
    few_shot = [{"role": "user", "content": "Example question. " * 40}, {"role": "assistant", "content": "A."}]
    with_examples = [EngineRequest(i, f"e{i}", {"model": MODEL, "messages": [
        {"role": "system", "content": system}, *few_shot, {"role": "user", "content": f"q{i}"}]},
        CHAT_COMPLETIONS_URL) for i in range(3)]
    without = [_chat(10 + i, system, f"q{i}") for i in range(3)]
    mixed = [without[0], with_examples[0], without[1], with_examples[1], without[2], with_examples[2]]
    ordered = "".join(r.custom_id[0] for r in prefix_ordered(iter(mixed), window=None))
    assert "eee" in ordered  # the rows sharing the few-shot examples too are contiguous


def _run(engine, requests):
    return {result.request.custom_id: result for result in engine.stream(iter(requests), max_in_flight=8)}


def test_copies_of_a_greedy_request_are_generated_once_and_all_answered():
    rows = [_chat(i, "sys", f"q{i % 4}") for i in range(20)]  # 4 distinct requests, 5 copies each
    inner = ScriptedEngine(echo=True)
    engine = DeduplicatingEngine(inner, GREEDY)
    results = _run(engine, rows)
    assert sorted(results) == sorted(f"r{i}" for i in range(20))
    assert len(inner.seen) == 4 and engine.copies_answered == 16
    assert all(result.completions[0].text == f"answer to q{int(cid[1:]) % 4}" for cid, result in results.items())
    assert all(result.request.custom_id == cid for cid, result in results.items())


def test_a_copy_read_after_its_leader_finished_is_answered_from_the_recent_answers():
    rows = [_chat(0, "sys", "q"), *[_chat(i, "sys", f"other {i}") for i in range(1, 30)], _chat(30, "sys", "q")]
    inner = ScriptedEngine(echo=True)
    results = _run(DeduplicatingEngine(inner, GREEDY), rows)
    assert len(results) == 31 and len(inner.seen) == 30
    assert results["r30"].completions[0].text == "answer to q"


@pytest.mark.parametrize(("fields", "defaults", "generated"), [
    ({}, SamplingDefaults(), 6),  # vLLM's default temperature 1: every copy may differ
    ({"temperature": 0.7}, GREEDY, 6),
    ({"temperature": 0.7, "seed": 5}, SamplingDefaults(), 1),  # seeded: reproducible
    ({}, GREEDY, 1),
    ({"temperature": 0}, SamplingDefaults(), 1),
])
def test_only_deterministic_requests_are_shared(fields, defaults, generated):
    inner = ScriptedEngine(echo=True)
    _run(DeduplicatingEngine(inner, defaults), [_chat(i, "sys", "q", **fields) for i in range(6)])
    assert len(inner.seen) == generated


def test_fields_without_effect_do_not_split_copies_and_ones_with_effect_do():
    rows = [_chat(0, "sys", "q", user="alice"), _chat(1, "sys", "q", user="bob", metadata={"k": "v"}),
            _chat(2, "sys", "q", max_tokens=3)]
    inner = ScriptedEngine(echo=True)
    _run(DeduplicatingEngine(inner, GREEDY), rows)
    assert sorted(inner.seen) == [0, 2]


def test_embedding_copies_are_shared_whatever_the_sampling_defaults():
    rows = [EngineRequest(i, f"e{i}", {"model": "embedder", "input": "same text"}, EMBEDDINGS_URL) for i in range(3)]
    inner = ScriptedEngine()  # answers without reading messages
    _run(DeduplicatingEngine(inner, SamplingDefaults()), rows)
    assert len(inner.seen) == 1


def test_a_batch_with_copies_gets_every_custom_id_once_in_its_files(tmp_path):
    lines = []
    for i in range(300):
        question = f"question {i % 210}"  # 90 copies among 300 rows (30%)
        lines.append({"custom_id": f"c{i:03d}", "method": "POST", "url": CHAT_COMPLETIONS_URL,
                      "body": {"model": MODEL, "temperature": 0, "messages": [{"role": "user", "content": question}]}})
    random.Random(1).shuffle(lines)
    source = write_jsonl(tmp_path / "in.jsonl", lines)
    requests = tmp_path / "requests.parquet"
    write_requests(BatchFileScan(source, {MODEL}, InputLimits()).rows(), requests)
    store = ChunkStore(tmp_path / "chunks")
    inner = ScriptedEngine(echo=True)
    engine = DeduplicatingEngine(inner, GREEDY)
    generate_responses(requests, store, store.prepare(), engine, MODEL, policy=ChunkPolicy(size=100), max_in_flight=32,
                       order_window=64)
    write_output_files(store, tmp_path / "output.jsonl", tmp_path / "errors.jsonl")
    output = [json.loads(line) for line in (tmp_path / "output.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in output) == sorted(line["custom_id"] for line in lines)
    asked = {line["custom_id"]: line["body"]["messages"][0]["content"] for line in lines}
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] == f"answer to {asked[line['custom_id']]}"
               for line in output)
    assert len(inner.seen) + engine.copies_answered == 300 and len(inner.seen) < 300 * 0.75


def test_prefix_key_reads_every_endpoint():
    for url, body in [("/v1/completions", {"model": MODEL, "prompt": ["a", [1, 2]]}),
                      ("/v1/responses", {"model": MODEL, "input": "hi", "instructions": "be brief"}),
                      ("/v1/responses", {"model": MODEL, "input": [{"bad": "item"}]}),
                      (EMBEDDINGS_URL, {"model": MODEL, "input": "x"})]:
        assert prefix_key(EngineRequest(0, "x", body, url))
