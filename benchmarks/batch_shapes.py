"""The batches people really send, raw vLLM against the pipeline's engine path, side by side on one engine.

    python benchmarks/batch_shapes.py shared [--rows 1200] [--prompts 200] [--words 480]
        rows sharing long system prompts (more than the KV cache holds), shuffled: raw `LLM.chat` over
        the rows in file order vs the pipeline path (prefix order, copies shared, chunks, output files)
    python benchmarks/batch_shapes.py duplicates [--rows 1000] [--copies 0.3]
        a greedy batch where a share of the rows repeat earlier ones, same comparison

Each side starts from an empty prefix cache; both run prefix caching (vLLM's default). Prints each
side's seconds, the share of prompt tokens served from the cache, and raw/pipeline (the speed-up).
Uses the registry entry SmolLM2-135M-Instruct of $BATCH_PIPELINE_DATA (default data/), in one process.
"""

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from batch_pipeline.core.registry import load_registry
from batch_pipeline.core.settings import InputLimits, Settings
from batch_pipeline.generation.checkpointing import generate_responses
from batch_pipeline.generation.chunks import ChunkPolicy, ChunkStore
from batch_pipeline.generation.engine.environment import configure_engine_environment
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.engine.vllm.engine import VllmEngine
from batch_pipeline.generation.engine.vllm.prompts import prompt_messages
from batch_pipeline.generation.engine.vllm.sampling import sampling_kwargs
from batch_pipeline.generation.feed import DeduplicatingEngine
from batch_pipeline.generation.results import write_output_files
from batch_pipeline.intake.requests_table import write_requests
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL

MODEL = "SmolLM2-135M-Instruct"
_WORDS = ("the of and to in is you that it he was for on are as with his they at be this have from or one had by "
          "word but not what all were we when your can said there use an each which she do how their if will up "
          "other about out many then them these so some her would make like him into time has look two more write "
          "go see number no way could people my than first water been call who oil its now find long down day did "
          "get come made may part rule policy customer order refund shipping account review careful answer").split()


def _line(index: int, system: str, question: str, max_tokens: int) -> dict:
    return {"custom_id": f"row-{index:06d}", "method": "POST", "url": CHAT_COMPLETIONS_URL,
            "body": {"model": MODEL, "temperature": 0, "max_tokens": max_tokens,
                     "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}}


def shared_prompt_lines(rows: int, prompts: int, words: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    systems = [f"Instructions set {p}. " + " ".join(rng.choice(_WORDS) for _ in range(words)) for p in range(prompts)]
    return [_line(i, rng.choice(systems), f"Question {i}: which rule applies to case {rng.randrange(10**6)}?", 16)
            for i in range(rows)]


def duplicate_lines(rows: int, copies: float, seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    distinct = [f"Write one sentence about {' '.join(rng.choice(_WORDS) for _ in range(6))}." for _ in range(rows)]
    lines = []
    for i in range(rows):
        repeat = lines and rng.random() < copies
        question = rng.choice(lines)["body"]["messages"][1]["content"] if repeat else distinct[i]
        lines.append(_line(i, "You are a concise assistant.", question, 48))
    return lines


def _engine() -> VllmEngine:
    data_dir = Settings().data_dir
    configure_engine_environment(data_dir)
    registry = data_dir / "registry.yaml"
    return VllmEngine(EngineSpec.resolve(MODEL, load_registry(registry).entry(MODEL), registry.parent))


def _raw(engine: VllmEngine, lines: list[dict]) -> dict:
    from vllm import SamplingParams

    engine.llm.reset_prefix_cache()
    bodies = [line["body"] for line in lines]
    conversations = [prompt_messages(body) for body in bodies]
    params = [SamplingParams(**sampling_kwargs(body, engine.spec.sampling)) for body in bodies]
    started = time.monotonic()
    outputs = engine.llm.chat(conversations, params, use_tqdm=False)
    seconds = time.monotonic() - started
    prompt = sum(len(output.prompt_token_ids) for output in outputs)
    cached = sum(output.num_cached_tokens or 0 for output in outputs)
    return {"seconds": seconds, "cached_share": cached / prompt, "generated_requests": len(lines)}


def _pipeline(engine: VllmEngine, lines: list[dict], work: Path) -> dict:
    engine.llm.reset_prefix_cache()
    source = work / "input.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in lines))
    requests = work / "requests.parquet"
    write_requests(BatchFileScan(source, {MODEL}, InputLimits()).rows(), requests)
    store = ChunkStore(work / "chunks")
    fed = DeduplicatingEngine(engine, engine.spec.sampling)
    started = time.monotonic()
    generate_responses(requests, store, store.prepare(), fed, MODEL, ChunkPolicy(size=Settings().chunk_size, seconds=Settings().chunk_seconds),
                       Settings().max_in_flight, Settings().order_window)
    totals = write_output_files(store, work / "output.jsonl", work / "errors.jsonl")
    seconds = time.monotonic() - started
    assert totals.rows == len(lines) and totals.failed == 0, totals
    return {"seconds": seconds, "cached_share": totals.cached_tokens / totals.prompt_tokens,
            "generated_requests": len(lines) - fed.copies_answered}


def compare(name: str, lines: list[dict]) -> None:
    engine = _engine()
    print(f"{name}: {len(lines)} rows; engine start {engine.load_seconds:.1f}s; warming up", flush=True)
    _raw(engine, lines[:20])
    with tempfile.TemporaryDirectory() as tmp:
        ours = _pipeline(engine, lines, Path(tmp))
    raw = _raw(engine, lines)
    engine.shutdown()
    for side, figures in (("raw LLM.chat, file order", raw), ("pipeline path", ours)):
        print(f"  {side:<25} {figures['seconds']:7.1f}s  prompt tokens from cache {figures['cached_share']:.0%}  "
              f"requests generated {figures['generated_requests']}", flush=True)
    print(f"  speed-up raw/pipeline = {raw['seconds'] / ours['seconds']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    shared = commands.add_parser("shared")
    shared.add_argument("--rows", type=int, default=1200)
    shared.add_argument("--prompts", type=int, default=200)
    shared.add_argument("--words", type=int, default=480, help="words per system prompt (~1.4 tokens each)")
    duplicates = commands.add_parser("duplicates")
    duplicates.add_argument("--rows", type=int, default=1000)
    duplicates.add_argument("--copies", type=float, default=0.3)
    args = parser.parse_args()
    if args.command == "shared":
        compare("shared prompts", shared_prompt_lines(args.rows, args.prompts, args.words))
    else:
        compare("duplicates", duplicate_lines(args.rows, args.copies))


if __name__ == "__main__":
    main()
