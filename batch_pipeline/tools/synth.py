"""Writes a realistic synthetic chat batch (varied personas, tasks and lengths), deterministic per seed.

    python -m batch_pipeline.tools.synth --count 1000 --output batch.jsonl [--model NAME] [--seed 0]
"""

import argparse
import json
import random
from pathlib import Path

from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL

_PERSONAS = [
    "You are a concise assistant.",
    "You are a patient teacher who explains things simply.",
    "You are a meticulous copy editor.",
    "You are a friendly travel guide.",
    "You are a senior software engineer reviewing code.",
    "You are a helpful assistant that answers in one short paragraph.",
    "You are a poet with a playful style.",
    "You are a careful historian.",
]
_TOPICS = ["the water cycle", "black holes", "the French Revolution", "sourdough bread", "binary search",
           "photosynthesis", "the Roman Empire", "electric cars", "jazz music", "honeybees",
           "climate change", "the printing press", "machine learning", "volcanoes", "chess openings"]
_TASKS = [
    "Explain {topic} to a ten-year-old.",
    "Write a haiku about {topic}.",
    "List three surprising facts about {topic}.",
    "Summarize the key ideas of {topic} in two sentences.",
    "Give me a quiz question about {topic} with its answer.",
    "Write a short product description inspired by {topic}.",
    "What are the pros and cons of {topic}?",
    "Translate into French: 'I would like to learn more about {topic}.'",
]
_CONTEXT = ("Here are some notes I took earlier, use them if helpful: {topic} has a long history, "
            "many people find it fascinating, and there are several common misconceptions about it. ")


def synth_line(rng: random.Random, index: int, model: str) -> dict:
    topic = rng.choice(_TOPICS)
    task = rng.choice(_TASKS).format(topic=topic)
    context = (_CONTEXT.format(topic=topic) * rng.choice([0, 0, 1, 2, 4])).strip()
    messages = [{"role": "system", "content": rng.choice(_PERSONAS)},
                {"role": "user", "content": f"{context}\n\n{task}".strip()}]
    body = {"model": model, "messages": messages, "max_tokens": rng.choice([32, 48, 64, 96, 128])}
    if rng.random() < 0.2:
        body["temperature"] = round(rng.uniform(0.2, 1.0), 2)
        body["seed"] = rng.randrange(1_000_000)
    return {"custom_id": f"synth-{index:06d}", "method": "POST", "url": CHAT_COMPLETIONS_URL, "body": body}


def write_synthetic_batch(path: Path, count: int, model: str, seed: int = 0, max_tokens: int | None = None) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            line = synth_line(rng, index, model)
            if max_tokens is not None:
                line["body"]["max_tokens"] = max_tokens
            handle.write(json.dumps(line) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-tokens", type=int, help="the same max_tokens on every request")
    args = parser.parse_args()
    write_synthetic_batch(args.output, args.count, args.model, args.seed, args.max_tokens)


if __name__ == "__main__":
    main()
