"""Readable prompt text for people comparing or reviewing answers."""

import json
from typing import Any


def _content_text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    # A list of parts: text parts as they are, anything else (an image, audio) by its type.
    return " ".join(part.get("text", "") if part.get("type") == "text" else f"[{part.get('type', 'part')}]"
                    for part in content)


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """The whole conversation as `role: content` lines: the system prompt matters as much as the question."""
    return "\n".join(f"{message['role']}: {_content_text(message.get('content'))}" for message in messages)


def request_messages(body_json: str) -> list[dict[str, Any]]:
    return json.loads(body_json)["messages"]
