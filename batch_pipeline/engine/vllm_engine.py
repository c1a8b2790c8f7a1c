"""An in-process vLLM engine fed continuously: requests stream in, finished results stream out.

Keeping `max_in_flight` requests queued means vLLM's scheduler always has a full batch, so the
caller can checkpoint as results arrive without costing throughput.
"""

import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_pipeline.engine.environment import configure_engine_environment, platform_engine_kwargs
from batch_pipeline.engine.processes import stop_child_engines
from batch_pipeline.openai_format import Completion
from batch_pipeline.registry import ModelEntry, resolve_engine_kwargs
from batch_pipeline.sampling import UnsupportedRequest, prompt_messages, sampling_kwargs


@dataclass
class EngineRequest:
    row_index: int
    custom_id: str
    body: dict[str, Any]


@dataclass
class EngineResult:
    request: EngineRequest
    prompt_tokens: int = 0
    completions: list[Completion] = field(default_factory=list)
    error: UnsupportedRequest | None = None
    latency_s: float | None = None


class VllmEngine:
    def __init__(self, name: str, entry: ModelEntry, registry_dir: Path):
        configure_engine_environment()
        from vllm import LLM

        self.name = name
        self.entry = entry
        self.engine_kwargs = platform_engine_kwargs(resolve_engine_kwargs(entry, registry_dir))
        started = time.monotonic()
        self.llm = LLM(**self.engine_kwargs)
        self.load_seconds = time.monotonic() - started
        self._engine = self.llm.llm_engine
        self._tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self._engine.model_config.max_model_len

    def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
        try:
            text = self._tokenizer.apply_chat_template(
                prompt_messages(body), add_generation_prompt=True, tokenize=False)
        except UnsupportedRequest:
            raise
        except Exception as exc:  # the model's own chat template refused the conversation
            raise UnsupportedRequest(f"The chat template rejected the messages: {exc}", "messages") from None
        ids = self._tokenizer.encode(text, add_special_tokens=False)
        if len(ids) >= self.max_model_len:
            raise UnsupportedRequest(
                f"This model's maximum context length is {self.max_model_len} tokens. However, your "
                f"messages resulted in {len(ids)} tokens. Please reduce the length of the messages.",
                "messages", code="context_length_exceeded")
        return ids

    def _submit(self, request: EngineRequest) -> None:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind

        ids = self._prompt_ids(request.body)
        kwargs = sampling_kwargs(request.body, self.entry.sampling)
        # Like OpenAI, no max_tokens means "up to the context length" (vLLM's own default is 16).
        kwargs.setdefault("max_tokens", self.max_model_len - len(ids))
        try:
            params = SamplingParams(**kwargs, output_kind=RequestOutputKind.FINAL_ONLY)
            self._engine.add_request(str(request.row_index), {"prompt_token_ids": ids}, params)
        except (ValueError, VLLMValidationError) as exc:  # vLLM's own per-request validation
            raise UnsupportedRequest(str(exc), getattr(exc, "parameter", None), code="invalid_value") from None

    def stream(self, requests: Iterator[EngineRequest], max_in_flight: int) -> Iterator[EngineResult]:
        """Results in completion order; abandoning the iterator aborts what is still in flight."""
        in_flight: dict[str, tuple[EngineRequest, float]] = {}
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < max_in_flight:
                    request = next(requests, None)
                    if request is None:
                        exhausted = True
                        break
                    try:
                        self._submit(request)
                    except UnsupportedRequest as refusal:
                        yield EngineResult(request=request, error=refusal)
                        continue
                    in_flight[str(request.row_index)] = (request, time.monotonic())
                if not in_flight:
                    return
                for output in self._engine.step():
                    if not output.finished:
                        continue
                    request, submitted = in_flight.pop(output.request_id)
                    yield EngineResult(
                        request=request,
                        prompt_tokens=len(output.prompt_token_ids or []),
                        completions=[Completion(text=c.text, finish_reason=c.finish_reason or "stop",
                                                tokens=len(c.token_ids)) for c in output.outputs],
                        latency_s=time.monotonic() - submitted,
                    )
        finally:
            if in_flight:
                self._engine.abort_request(list(in_flight))

    def shutdown(self) -> None:
        self._engine.engine_core.shutdown()
        del self._engine, self.llm
        gc.collect()
        stop_child_engines(grace_seconds=10)


_loaded: VllmEngine | None = None


def engine_for(name: str, entry: ModelEntry, registry_dir: Path) -> tuple[VllmEngine, bool]:
    """The process keeps one engine: reused for the same model, replaced (old one freed) otherwise."""
    global _loaded
    if _loaded is not None and _loaded.name == name and _loaded.entry == entry:
        return _loaded, True
    release_engine()
    _loaded = VllmEngine(name, entry, registry_dir)
    return _loaded, False


def release_engine() -> None:
    global _loaded
    engine, _loaded = _loaded, None
    if engine is not None:
        engine.shutdown()
