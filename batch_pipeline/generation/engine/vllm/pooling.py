"""What an embeddings request may ask of vLLM's pooling engine, checked before it reaches the engine."""

from typing import Any

from pydantic import ValidationError

from batch_pipeline.protocol.embeddings import EmbeddingFields
from batch_pipeline.protocol.errors import refusal


def pooling_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """`PoolingParams` keyword arguments; raises UnsupportedRequest naming the offending field."""
    try:
        fields = EmbeddingFields.model_validate(body)
    except ValidationError as exc:
        raise refusal(exc.errors()[0]) from None
    return {"task": "embed", **({"dimensions": fields.dimensions} if fields.dimensions else {})}
