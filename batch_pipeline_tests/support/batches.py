"""Batch files as users write them, and a cell materialized from one."""

import errno
import json
import os
from pathlib import Path

from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline_tests.support.models import MODEL

_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain recursion to a child in one sentence.",
    "List three fruits that are red.",
    "Give a synonym for 'happy'.",
]


def request_line(custom_id: str, model: str = MODEL, **body_fields) -> dict:
    index = sum(map(ord, custom_id))
    body = {"model": model, "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": _PROMPTS[index % len(_PROMPTS)]},
    ]}
    body.update(body_fields)
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_jsonl(path: Path, lines: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def write_batch(path: Path, count: int, **body_fields) -> Path:
    """`count` distinct requests: none is a copy another's answer would serve (generation.feed)."""
    lines = [request_line(f"req-{i:05d}", **body_fields) for i in range(count)]
    for index, line in enumerate(lines):
        line["body"]["messages"][-1]["content"] += f" (question {index})"
    return write_jsonl(path, lines)


def materialize_cell(pipeline: PipelineConfig, dataset: str, lines: list, models: tuple[str, ...] = (MODEL,)):
    """Writes `lines` as the dataset's input, then materializes its requests and its responses for each
    of `models`, in order, on one instance; returns the last responses materialization."""
    from dagster import instance_for_test, materialize

    from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
    from batch_pipeline.generation.assets import batch_responses
    from batch_pipeline.intake.assets import batch_requests

    write_jsonl(pipeline.layout.dataset(dataset).input, lines)
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(DATASETS.name, [dataset])
        instance.add_dynamic_partitions(MODELS.name, list(models))
        resources = {"pipeline": pipeline}
        assert materialize([batch_requests], partition_key=dataset, instance=instance, resources=resources).success
        for model in models:
            result = materialize([batch_requests, batch_responses], selection=[batch_responses],
                                 partition_key=dataset_model_key(dataset, model), instance=instance,
                                 resources=resources)
            assert result.success
    return result


def fail_renames_of(monkeypatch, name: str) -> None:
    """Renaming the inbox file `name` fails as it does across filesystems (EXDEV); others move."""
    from batch_pipeline.intake import inbox

    real_replace = os.replace

    def replace(source, target):
        if Path(source).name == name:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(source), None, str(target))
        real_replace(source, target)

    monkeypatch.setattr(inbox.os, "replace", replace)
