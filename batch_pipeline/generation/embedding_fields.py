"""What an embeddings request may ask of vLLM's pooling engine, checked before it reaches the engine."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batch_pipeline.generation.sampling import refusal


class EmbeddingFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: Any  # checked at intake
    encoding_format: Literal["float", "base64"] = "float"
    # vLLM refuses it for a model without Matryoshka training; that refusal names the field.
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None


def pooling_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """`PoolingParams` keyword arguments; raises UnsupportedRequest naming the offending field."""
    try:
        fields = EmbeddingFields.model_validate(body)
    except ValidationError as exc:
        raise refusal(exc.errors()[0]) from None
    return {"task": "embed", **({"dimensions": fields.dimensions} if fields.dimensions else {})}
