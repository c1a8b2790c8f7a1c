"""`/v1/embeddings`: its input body, the fields a request may set, and its answer body."""

import base64
import struct
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from batch_pipeline.protocol.answers import EngineResult
from batch_pipeline.protocol.batch import InputLine, RequestBody
from batch_pipeline.protocol.endpoint import Endpoint
from batch_pipeline.protocol.texts import as_conversation, texts_field

EMBEDDINGS_URL = "/v1/embeddings"


class EmbeddingBody(RequestBody):
    # API limit: OpenAI refuses empty strings as embedding input.
    input: Annotated[Any, AfterValidator(lambda value: texts_field(value, empty_text=False))]


class EmbeddingInputLine(InputLine):
    url: Literal["/v1/embeddings"]
    body: EmbeddingBody


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a string when `encoding_format` is base64 (little-endian float32)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class EmbeddingFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    input: Any  # checked at intake
    encoding_format: Literal["float", "base64"] = "float"
    # vLLM refuses it for a model without Matryoshka training; that refusal names the field.
    dimensions: int | None = Field(default=None, gt=0)
    user: str | None = None


def _encoded(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # OpenAI's packing: little-endian float32
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embedding_list(model: str, result: EngineResult) -> EmbeddingList:
    encoding_format = result.request.body.get("encoding_format") or "float"
    return EmbeddingList(
        model=model, usage=EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens),
        data=[Embedding(index=i, embedding=_encoded(c.embedding, encoding_format))
              for i, c in enumerate(result.completions)],
    )


ENDPOINT = Endpoint(url=EMBEDDINGS_URL, input_line=EmbeddingInputLine, answer_body=embedding_list,
                    conversation=lambda body: as_conversation(body["input"]), text_field="input", embeds=True)
