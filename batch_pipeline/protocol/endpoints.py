"""Every endpoint the service answers, by URL: the one place a new endpoint is registered."""

from typing import Annotated

from pydantic import Field

from batch_pipeline.protocol import chat, completions, embeddings, responses
from batch_pipeline.protocol.endpoint import Endpoint

ENDPOINTS: dict[str, Endpoint] = {endpoint.url: endpoint for endpoint in (
    chat.ENDPOINT, completions.ENDPOINT, responses.ENDPOINT, embeddings.ENDPOINT)}
SUPPORTED_URLS = tuple(ENDPOINTS)

# The url picks the body's shape, so a body error names the field its endpoint expects.
BatchInputLine = Annotated[chat.ChatInputLine | completions.CompletionInputLine | responses.ResponsesInputLine
                           | embeddings.EmbeddingInputLine, Field(discriminator="url")]
