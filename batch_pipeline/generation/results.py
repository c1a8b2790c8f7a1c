"""From engine results to chunk rows, and from chunks to OpenAI output/error files and totals."""

import base64
import json
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from batch_pipeline.core.layout import ResponsePaths
from batch_pipeline.core.storage import atomic_path
from batch_pipeline.generation.chunks import ChunkStore, ResultRow, read_columns
from batch_pipeline.generation.engine.interface import Completion, EngineResult, TokenLogprob
from batch_pipeline.intake.openai_format import (
    CHAT_COMPLETIONS_URL,
    COMPLETIONS_URL,
    EMBEDDINGS_URL,
    RESPONSES_URL,
    AssistantMessage,
    BatchOutputLine,
    ChatCompletion,
    ChatLogprobs,
    Choice,
    CompletionChoice,
    CompletionLogprobs,
    Embedding,
    EmbeddingList,
    EmbeddingUsage,
    IncompleteDetails,
    InputTokensDetails,
    OutputMessage,
    OutputText,
    PromptTokensDetails,
    ResponseEnvelope,
    ResponseObject,
    TextCompletion,
    TokenLogprobContent,
    TokenUsage,
    TopLogprob,
    Usage,
    error_body,
    new_id,
)


def _usage(result: EngineResult) -> Usage:
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
                 total_tokens=result.prompt_tokens + result.completion_tokens,
                 prompt_tokens_details=PromptTokensDetails(cached_tokens=result.cached_tokens))


def _top(token: str, logprob: float) -> TopLogprob:
    return TopLogprob(token=token, logprob=logprob, bytes=list(token.encode("utf-8")))


def _chat_logprobs(tokens: list[TokenLogprob] | None) -> ChatLogprobs | None:
    if tokens is None:
        return None
    return ChatLogprobs(content=[
        TokenLogprobContent(**_top(t.token, t.logprob).model_dump(),
                            top_logprobs=[_top(a.token, a.logprob) for a in t.top])
        for t in tokens])


def _completion_logprobs(tokens: list[TokenLogprob] | None, offset: int) -> CompletionLogprobs | None:
    if tokens is None:
        return None
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.token)
    return CompletionLogprobs(tokens=[t.token for t in tokens], token_logprobs=[t.logprob for t in tokens],
                              top_logprobs=[{a.token: a.logprob for a in t.top} for t in tokens],
                              text_offset=offsets)


def _message(completion: Completion) -> AssistantMessage:
    """With tool calls, `content` is null unless the model also said something (OpenAI's shape)."""
    if completion.tool_calls is None:
        return AssistantMessage(content=completion.text)
    return AssistantMessage(content=completion.text or None, tool_calls=completion.tool_calls)


def _row_text(completion: Completion) -> str:
    """The answer as previews and quality checks read it: any tool calls written out after the text."""
    calls = [f"{call.function.name}({call.function.arguments})" for call in completion.tool_calls or []]
    return "\n".join(part for part in (completion.text, *calls) if part)


def chat_completion(model: str, result: EngineResult) -> ChatCompletion:
    return ChatCompletion(
        id=new_id("chatcmpl-"), created=int(time.time()), model=model, usage=_usage(result),
        choices=[Choice(index=i, message=_message(c), finish_reason=c.finish_reason,
                        logprobs=_chat_logprobs(c.logprobs))
                 for i, c in enumerate(result.completions)],
    )


def text_completion(model: str, result: EngineResult) -> TextCompletion:
    """`echo` puts the prompt in front of the text; log probability offsets count from the text's start."""
    return TextCompletion(
        id=new_id("cmpl-"), created=int(time.time()), model=model, usage=_usage(result),
        choices=[CompletionChoice(index=i, text=c.prompt + c.text, finish_reason=c.finish_reason,
                                  logprobs=_completion_logprobs(c.logprobs, len(c.prompt)))
                 for i, c in enumerate(result.completions)],
    )


def response_object(model: str, result: EngineResult) -> ResponseObject:
    """One answer (the Responses API has no `n`); cut by max_output_tokens, it is `incomplete`."""
    settings, answer = result.request.body, result.completions[0]
    status = "incomplete" if answer.finish_reason == "length" else "completed"
    return ResponseObject(
        id=new_id("resp_"), created_at=int(time.time()), status=status, model=model,
        incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
        output=[OutputMessage(id=new_id("msg_"), status=status, content=[OutputText(text=answer.text)])],
        instructions=settings.get("instructions"), max_output_tokens=settings.get("max_output_tokens"),
        temperature=settings.get("temperature"), top_p=settings.get("top_p"),
        text={"format": (settings.get("text") or {}).get("format") or {"type": "text"}},
        metadata=settings.get("metadata") or {},
        usage=TokenUsage(input_tokens=result.prompt_tokens, output_tokens=answer.tokens,
                         input_tokens_details=InputTokensDetails(cached_tokens=result.cached_tokens),
                         total_tokens=result.prompt_tokens + answer.tokens),
    )


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


_FORMATTERS = {CHAT_COMPLETIONS_URL: chat_completion, COMPLETIONS_URL: text_completion, RESPONSES_URL: response_object,
               EMBEDDINGS_URL: embedding_list}


def result_row(result: EngineResult, model: str) -> ResultRow:
    ids = {"row_index": result.request.row_index, "custom_id": result.request.custom_id,
           "line_id": new_id("batch_req_"), "request_id": new_id("req_")}
    if result.error is not None:
        body = error_body(result.error.message, result.error.param, result.error.code)
        return ResultRow(**ids, status_code=400, body_json=body.model_dump_json(),
                         error_code=result.error.code, error_message=result.error.message)
    body = _FORMATTERS[result.request.url](model, result)
    first = result.completions[0]
    return ResultRow(
        **ids, status_code=200, body_json=body.model_dump_json(), prompt_tokens=result.prompt_tokens,
        cached_tokens=result.cached_tokens, completion_tokens=result.completion_tokens, latency_s=result.latency_s,
        **({"embedding": first.embedding} if first.embedding is not None else
           {"text": _row_text(first), "finish_reason": first.finish_reason}),
    )


class ResponseTotals(BaseModel):
    rows: int = 0
    succeeded: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    def add(self, row: dict) -> None:
        ok = row["status_code"] == 200
        self.rows += 1
        self.succeeded += ok
        self.failed += not ok
        self.prompt_tokens += row["prompt_tokens"]
        self.completion_tokens += row["completion_tokens"]
        self.cached_tokens += row["cached_tokens"] or 0


_TALLY_COLUMNS = ["status_code", "prompt_tokens", "completion_tokens", "cached_tokens"]


def tally_chunk(path: Path) -> ResponseTotals:
    totals = ResponseTotals()
    for row in read_columns(path, _TALLY_COLUMNS).to_pylist():
        totals.add(row)
    return totals


def combine(parts: Iterable[ResponseTotals]) -> ResponseTotals:
    parts = list(parts)
    return ResponseTotals(**{field: sum(getattr(part, field) for part in parts)
                             for field in ResponseTotals.model_fields})


_LINE_COLUMNS = ["custom_id", "line_id", "request_id", "status_code", "body_json"]


def _kept_lines(store: ChunkStore) -> set[tuple[int, int]]:
    """(chunk, position) of the one line each row_index gets: a 200 over an error, else the first.
    One writer per cell makes duplicates impossible; this is the last line of defence should one
    still appear (chunks copied in by hand, a data folder written by an older version)."""
    kept: dict[int, tuple[int, int, bool]] = {}
    for chunk, path in enumerate(store.paths()):
        table = read_columns(path, ["row_index", "status_code"])
        for position, (row, status) in enumerate(zip(table.column(0).to_pylist(), table.column(1).to_pylist())):
            current = kept.get(row)
            if current is None or (status == 200 and not current[2]):
                kept[row] = (chunk, position, status == 200)
    return {(chunk, position) for chunk, position, _ in kept.values()}


def write_output_files(store: ChunkStore, output_path: Path, errors_path: Path,
                       unfinished: Iterable[BatchOutputLine] = ()) -> ResponseTotals:
    """Writes output.jsonl (status 200) and errors.jsonl (the rest, then any `unfinished` lines, e.g.
    requests a batch's expiry left undone) from one snapshot of the chunks, one line per row_index;
    the totals count what was written, `unfinished` lines as failed."""
    store = store.snapshot()
    kept = _kept_lines(store)
    totals = ResponseTotals()
    with atomic_path(output_path) as out_temp, atomic_path(errors_path) as err_temp, \
            out_temp.open("w", encoding="utf-8") as out, err_temp.open("w", encoding="utf-8") as err:
        for chunk, path in enumerate(store.paths()):
            for position, row in enumerate(read_columns(path, _LINE_COLUMNS + _TALLY_COLUMNS[1:]).to_pylist()):
                if (chunk, position) not in kept:
                    continue
                line = BatchOutputLine(
                    id=row["line_id"], custom_id=row["custom_id"],
                    response=ResponseEnvelope(status_code=row["status_code"], request_id=row["request_id"],
                                              body=json.loads(row["body_json"])),
                )
                (out if row["status_code"] == 200 else err).write(line.model_dump_json() + "\n")
                totals.add(row)
        for line in unfinished:
            err.write(line.model_dump_json() + "\n")
            totals.rows += 1
            totals.failed += 1
    return totals


def complete_on_disk(paths: ResponsePaths, rows: int) -> bool:
    """Both answer files written and a chunk row for each of the cell's `rows` requests: finished,
    whatever ran it and whatever the instance database remembers."""
    return paths.output.exists() and paths.errors.exists() and ChunkStore(paths.chunks).covers(rows)


def preview_markdown(store: ChunkStore, limit: int = 5, width: int = 160) -> str:
    lines = ["| custom_id | status | output |", "| --- | --- | --- |"]
    for row in store.iter_rows(["custom_id", "status_code", "text", "error_message", "embedding"]):
        shown = (row["text"] if row["status_code"] == 200 else row["error_message"]) or ""
        if row["embedding"] is not None:
            shown = f"({len(row['embedding'])}-dimensional embedding)"
        shown = " ".join(shown.split()).replace("|", "\\|")
        lines.append(f"| {row['custom_id']} | {row['status_code']} | {shown[:width]} |")
        if len(lines) - 2 >= limit:
            break
    return "\n".join(lines)
