"""Streams a batch input file and checks every line against the OpenAI batch input format.

Like OpenAI, one invalid line fails the whole file; every problem is reported with its line.
"""

import json
import os
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

from pydantic import BaseModel, TypeAdapter, ValidationError

from batch_pipeline.core.layout import DataLayout
from batch_pipeline.core.settings import InputLimits
from batch_pipeline.protocol.endpoints import ENDPOINTS, SUPPORTED_URLS, BatchInputLine
from batch_pipeline.protocol.limits import body_problems

MAX_REPORTED_ERRORS = 1000
_INPUT_LINE = TypeAdapter(BatchInputLine)


class LineError(BaseModel):
    """Shaped like an OpenAI batch `errors.data` item."""

    code: str
    line: int | None
    message: str
    param: str | None = None


class ValidationReport(BaseModel):
    file: str
    lines: int
    requests: int
    model: str | None
    endpoint: str | None  # of the valid lines; None when there is none
    error_count: int
    errors: list[LineError]
    # The mean answer cap of the requests when every one sets it: finish-time estimates scale with it.
    max_tokens_per_row: float | None = None

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def summary(self) -> str:
        shown = "\n".join(
            f"  line {e.line}: [{e.code}] {e.message}" if e.line else f"  [{e.code}] {e.message}"
            for e in self.errors[:20]
        )
        more = f"\n  ... and {self.error_count - 20} more" if self.error_count > 20 else ""
        return f"{self.file}: {self.error_count} invalid line(s) or problem(s):\n{shown}{more}"


class RequestRow(BaseModel):
    row_index: int
    line: int
    custom_id: str
    body_json: str
    url: str


_FIELD_CODES = {
    "custom_id": "invalid_custom_id",
    "method": "invalid_method",
    "url": "invalid_url",
    "body": "invalid_body",
}


def _pydantic_error(error: dict, line: int) -> LineError:
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return LineError(code="invalid_url", line=line, param="url",
                         message=f"missing or unsupported url; supported: {', '.join(SUPPORTED_URLS)}")
    # The first location part of a body error is the url that chose the body's shape.
    loc = [str(part) for part in error["loc"]][1:]
    param = ".".join(loc)
    if error["type"] == "missing":
        return LineError(code="missing_required_parameter", line=line, param=param,
                         message=f"missing required field '{param}'")
    if error["type"] == "extra_forbidden":
        return LineError(code="unexpected_parameter", line=line, param=param,
                         message=f"unexpected field '{param}' (allowed: custom_id, method, url, body)")
    if loc and loc[0] == "url":
        return LineError(code="invalid_url", line=line, param="url",
                         message=f"unsupported url; supported: {', '.join(SUPPORTED_URLS)}")
    if loc and loc[0] == "method":
        return LineError(code="invalid_method", line=line, param="method", message="method must be 'POST'")
    code = _FIELD_CODES.get(loc[0] if loc else "", "invalid_request")
    return LineError(code=code, line=line, param=param, message=f"'{param}': {error['msg']}")


# The field that caps an answer's tokens, per endpoint's body (chat, completions, responses).
_ANSWER_CAPS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


class BatchFileScan:
    """One pass over a batch file: yields valid requests and records every problem found."""

    def __init__(self, path: Path, registered_models: set[str], limits: InputLimits,
                 embedding_models: Collection[str] = ()):
        self.path = path
        self.registered_models = registered_models
        self.embedding_models = embedding_models
        self.limits = limits
        self.errors: list[LineError] = []
        self.error_count = 0
        self.lines = 0
        self.requests = 0
        self.model: str | None = None
        self.endpoint: str | None = None
        self._capped_rows = 0
        self._max_tokens = 0

    def _fail(self, error: LineError) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(error)

    def _check_model(self, model: str, url: str, line: int) -> None:
        if self.model is None:
            self.model = model
            if model not in self.registered_models:
                self._fail(LineError(
                    code="model_not_found", line=line, param="body.model",
                    message=f"model '{model}' is not registered; registered models: "
                            f"{', '.join(sorted(self.registered_models))}",
                ))
            elif ENDPOINTS[url].embeds != (model in self.embedding_models):
                self._fail(self._wrong_kind_of_model(model, url, line))
        elif model != self.model:
            self._fail(LineError(
                code="mismatched_model", line=line, param="body.model",
                message=f"model '{model}' differs from '{self.model}' on earlier lines; "
                        "a batch file must use one model",
            ))

    def _wrong_kind_of_model(self, model: str, url: str, line: int) -> LineError:
        if ENDPOINTS[url].embeds:
            wanted, kind = sorted(self.embedding_models), "is a text generation model"
        else:
            wanted, kind = sorted(set(self.registered_models) - set(self.embedding_models)), "is an embedding model"
        return LineError(code="invalid_model_for_endpoint", line=line, param="body.model",
                         message=f"model '{model}' {kind} and cannot answer {url}; models that can: "
                                 f"{', '.join(wanted) or '(none registered)'}")

    def _check_endpoint(self, url: str, line: int) -> None:
        if self.endpoint is None:
            self.endpoint = url
        elif url != self.endpoint:
            self._fail(LineError(
                code="mismatched_endpoint", line=line, param="url",
                message=f"url '{url}' differs from '{self.endpoint}' on earlier lines; a batch file must use "
                        "one endpoint",
            ))

    def rows(self) -> Iterator[RequestRow]:
        size = os.path.getsize(self.path)
        if size > self.limits.max_bytes:
            self._fail(LineError(code="file_too_large", line=None,
                                 message=f"file is {size} bytes; the limit is {self.limits.max_bytes}"))
            return
        first_line_of: dict[str, int] = {}
        with self.path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                self.lines += 1
                if self.lines > self.limits.max_lines:
                    self._fail(LineError(code="too_many_requests", line=number,
                                         message=f"more than {self.limits.max_lines} requests in one file"))
                    return
                row = self._parse_line(raw, number, first_line_of)
                if row is not None:
                    yield row
        if self.lines == 0:
            self._fail(LineError(code="empty_file", line=None, message="the file has no requests"))

    def _parse_line(self, raw: bytes, number: int, first_line_of: dict[str, int]) -> RequestRow | None:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._fail(LineError(code="invalid_json_line", line=number, message=f"not valid JSON: {exc}"))
            return None
        except RecursionError:
            self._fail(LineError(code="invalid_json_line", line=number, message="JSON nested too deeply"))
            return None
        except ValueError:  # the one other thing the reader refuses: an integer literal past Python's limit
            self._fail(LineError(code="invalid_json_line", line=number,
                                 message=f"a number has more than {sys.get_int_max_str_digits()} digits"))
            return None
        if not isinstance(data, dict):
            self._fail(LineError(code="invalid_json_line", line=number, message="a line must be a JSON object"))
            return None
        try:
            parsed = _INPUT_LINE.validate_python(data)
        except ValidationError as exc:
            for error in exc.errors():
                self._fail(_pydantic_error(error, number))
            return None
        if problems := body_problems(data["body"]):
            for problem in problems:
                self._fail(LineError(code="invalid_value", line=number, param=f"body.{problem.param}",
                                     message=f"'body.{problem.param}': {problem.message}"))
            return None
        if parsed.custom_id in first_line_of:
            self._fail(LineError(code="duplicate_custom_id", line=number, param="custom_id",
                                 message=f"custom_id '{parsed.custom_id}' already used on line "
                                         f"{first_line_of[parsed.custom_id]}"))
            return None
        body_json = json.dumps(data["body"], ensure_ascii=False)
        try:
            body_json.encode("utf-8")
        except UnicodeEncodeError:
            self._fail(LineError(code="invalid_json_line", line=number, param="body",
                                 message="the body contains an unpaired Unicode surrogate escape (\\ud800-\\udfff)"))
            return None
        first_line_of[parsed.custom_id] = number
        self._check_endpoint(parsed.url, number)
        self._check_model(parsed.body.model, parsed.url, number)
        self.requests += 1
        cap = next((data["body"][name] for name in _ANSWER_CAPS if name in data["body"]), None)
        if isinstance(cap, int):
            self._capped_rows += 1
            self._max_tokens += cap
        return RequestRow(row_index=self.requests - 1, line=number, custom_id=parsed.custom_id,
                          body_json=body_json, url=parsed.url)

    def report(self) -> ValidationReport:
        return ValidationReport(file=self.path.name, lines=self.lines, requests=self.requests,
                                model=self.model, endpoint=self.endpoint, error_count=self.error_count, errors=self.errors,
                                max_tokens_per_row=self._max_tokens / self.requests
                                if self.requests and self._capped_rows == self.requests else None)


def read_validation(layout: DataLayout, dataset: str) -> ValidationReport | None:
    """The dataset's validation report, once its ingest run has written one."""
    path = layout.dataset(dataset).validation
    return ValidationReport.model_validate_json(path.read_text()) if path.exists() else None
