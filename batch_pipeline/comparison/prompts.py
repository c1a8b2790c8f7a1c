"""Readable prompt text for people comparing or reviewing answers."""

import json
from typing import Any

from batch_pipeline.intake.validation import RequestRow
from batch_pipeline.protocol.endpoints import ENDPOINTS


def _content_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    # A list of parts: text parts as they are, anything else (an image, audio) by its type.
    return " ".join(part.get("text", "") if part.get("type") == "text" else f"[{part.get('type', 'part')}]"
                    for part in content)


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The whole conversation as `role: content` lines: the system prompt matters as much as the question."""
    return "\n".join(f"{message['role']}: {_content_text(message.get('content'))}" for message in messages)


def request_messages(request: RequestRow) -> list[dict[str, Any]]:
    """The conversation a request stands for, whatever its endpoint (a completions prompt list as one user
    message, a Responses request as its chat request)."""
    return ENDPOINTS[request.url].conversation(json.loads(request.body_json))
