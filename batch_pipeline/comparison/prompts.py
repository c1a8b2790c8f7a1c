"""Readable prompt text for people comparing or reviewing answers."""

import json
from typing import Any

from batch_pipeline.generation.engine.interface import UnsupportedRequest
from batch_pipeline.generation.responses_input import chat_body
from batch_pipeline.intake.openai_format import COMPLETIONS_URL, EMBEDDINGS_URL, RESPONSES_URL, prompt_list
from batch_pipeline.intake.validation import RequestRow


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
    """The conversation a request stands for, whatever its endpoint: a completions prompt or embeddings
    input (each listed text on its own line) as one user message, a Responses request as its chat request."""
    body = json.loads(request.body_json)
    if request.url in (COMPLETIONS_URL, EMBEDDINGS_URL):
        texts = prompt_list(body["prompt" if request.url == COMPLETIONS_URL else "input"])
        return [{"role": "user", "content": "\n".join(p if isinstance(p, str) else f"[token ids {p}]" for p in texts)}]
    if request.url == RESPONSES_URL:
        try:
            return chat_body(body)["messages"]
        except UnsupportedRequest:  # refused at generation; show what was sent
            return [{"role": "user", "content": json.dumps(body.get("input"), ensure_ascii=False)}]
    return body["messages"]
