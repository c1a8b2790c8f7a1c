"""The sampling fields chat and completions requests share, checked under OpenAI's names and limits."""

from typing import Annotated, Any, Literal

from jsonschema.exceptions import SchemaError
from jsonschema.validators import validator_for
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from batch_pipeline.protocol.limits import (
    INT32_MAX,
    INT64_MAX,
    INT64_MIN,
    LOGIT_BIAS_LIMIT,
    dangling_ref,
    dangling_ref_message,
)

MAX_STOP_SEQUENCES = 4


MAX_N = 16


# API limits: OpenAI's chat top_logprobs and legacy completions logprobs.
MAX_TOP_LOGPROBS = 20


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_object"]


def _checked_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuses what is not a JSON Schema (checked against its meta-schema) before it reaches the engine."""
    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
    if (ref := dangling_ref(schema)) is not None:
        raise ValueError(dangling_ref_message(ref))
    return schema


JsonSchema = Annotated[dict[str, Any], AfterValidator(_checked_schema)]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    # Without a schema the answer is any JSON object, as with json_object.
    schema_: JsonSchema | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class SamplingFields(BaseModel):
    """What chat and completions requests share; anything not declared is refused by name."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-LOGIT_BIAS_LIMIT, le=LOGIT_BIAS_LIMIT)]] | None = None
    # vLLM extensions, as its OpenAI server accepts them.
    top_k: int | None = Field(default=None, ge=-1, le=INT32_MAX)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    min_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)
    # Accepted and without effect on generation, as in OpenAI's batch API.
    user: str | None = None
    service_tier: str | None = None
    stream: Literal[False] | None = None

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else stop or []
        if len(sequences) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        if any(sequence == "" for sequence in sequences):
            raise ValueError("stop sequences must not be empty")
        return stop

    def check_combinations(self) -> None:
        """Refuses field combinations no single field's type can rule out."""

    def logprobs_count(self) -> int | None:
        """How many alternatives per token vLLM reports, or None for no log probabilities."""
        return None

    def structured_output(self) -> dict[str, Any] | None:
        """vLLM StructuredOutputsParams fields, or None for free text."""
        return None
