"""What a batch cost here (accelerator-seconds) and what its tokens would cost on hosted batch APIs,
from a dated price table shipped as data (`hosted_prices.yaml`, replaceable by the user's own)."""

from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from batch_pipeline.core.registry import Price

SHIPPED_PRICES = Path(__file__).with_name("hosted_prices.yaml")


class PriceTableError(ValueError):
    pass


class HostedPrices(BaseModel):
    as_of: str
    source: str
    prices: dict[str, Price]

    def costs(self, prompt_tokens: int, completion_tokens: int) -> dict[str, float]:
        return {name: round(price.cost(prompt_tokens, completion_tokens), 6) for name, price in self.prices.items()}


class BatchCost(BaseModel):
    """A finished cell's cost: its accelerator time and the hosted equivalents of its tokens."""

    gpu_seconds: float
    gpu_seconds_per_million_tokens: float | None
    hosted_cost_usd: dict[str, float]
    prices_as_of: str


def load_hosted_prices(path: str | Path | None = None) -> HostedPrices:
    """`path`: the user's table; empty or None for the shipped one."""
    source = Path(path) if path else SHIPPED_PRICES
    try:
        return HostedPrices.model_validate(yaml.safe_load(source.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise PriceTableError(f"hosted price table {source}: {exc}") from None


def batch_cost(prices: HostedPrices, seconds: float, accelerators: int, prompt_tokens: int,
               completion_tokens: int) -> BatchCost:
    """`seconds`: the run's engine time (load included when it loaded one); `accelerators`: those it held."""
    gpu_seconds = round(seconds * accelerators, 1)
    tokens = prompt_tokens + completion_tokens
    return BatchCost(gpu_seconds=gpu_seconds,
                     gpu_seconds_per_million_tokens=round(gpu_seconds * 1e6 / tokens, 1) if tokens else None,
                     hosted_cost_usd=prices.costs(prompt_tokens, completion_tokens), prices_as_of=prices.as_of)
