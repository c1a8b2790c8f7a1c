"""Per-model figures for a comparison: outcomes, answer lengths, speed and what a hosted API would charge."""

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel

from batch_pipeline.core.registry import Price
from batch_pipeline.generation.quality import STRUCTURED, QualityReport


class RunFigures(BaseModel):
    """Speed of the latest `batch_responses` run, from its materialization metadata (absent: unknown)."""

    generated_tokens_per_s: float | None = None
    generation_seconds: float | None = None
    engine_start_seconds: float | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> "RunFigures":
        """Accepts raw values or Dagster metadata values (which carry theirs in `.value`)."""
        values = {key: getattr(metadata[key], "value", metadata[key]) for key in cls.model_fields if key in metadata}
        return cls(**values)

    @property
    def gpu_seconds(self) -> float | None:
        if self.generation_seconds is None:
            return None
        return self.generation_seconds + (self.engine_start_seconds or 0.0)


class ModelSummary(BaseModel):
    model: str
    succeeded: int
    failed: int
    stopped_at_max_tokens: int
    mean_completion_tokens: float | None
    p50_completion_tokens: float | None
    p95_completion_tokens: float | None
    prompt_tokens: int
    completion_tokens: int
    generated_tokens_per_s: float | None
    gpu_seconds: float | None
    hosted_cost_usd: float | None
    # Of the finished answers to requests that asked for JSON; None when none did.
    json_valid_rate: float | None = None


def _rounded(value) -> float:
    return round(float(value), 1)


def _json_valid_rate(quality: QualityReport | None) -> float | None:
    check = next((check for check in quality.checks if check.name == STRUCTURED.name), None) if quality else None
    return round(1 - check.share, 4) if check is not None and check.of else None


def summarize(model: str, rows: Iterable[dict], figures: RunFigures, price: Price | None,
              quality: QualityReport | None = None) -> ModelSummary:
    """Length statistics cover successful answers only; a failed request has no answer to measure.

    A run that only resumed finished chunks generated nothing, so its 0 tokens/s means "unknown".
    """
    lengths: list[int] = []
    failed = at_max = prompt_tokens = 0
    for row in rows:
        prompt_tokens += row["prompt_tokens"]
        if row["status_code"] != 200:
            failed += 1
            continue
        lengths.append(row["completion_tokens"])
        at_max += row["finish_reason"] == "length"
    completion_tokens = sum(lengths)
    mean, p50, p95 = (_rounded(np.mean(lengths)), *map(_rounded, np.percentile(lengths, [50, 95]))) if lengths \
        else (None, None, None)
    return ModelSummary(
        model=model, succeeded=len(lengths), failed=failed, stopped_at_max_tokens=at_max,
        mean_completion_tokens=mean, p50_completion_tokens=p50, p95_completion_tokens=p95,
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
        generated_tokens_per_s=figures.generated_tokens_per_s or None,
        gpu_seconds=figures.gpu_seconds,
        hosted_cost_usd=price.cost(prompt_tokens, completion_tokens) if price else None,
        json_valid_rate=_json_valid_rate(quality),
    )
