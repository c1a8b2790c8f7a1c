"""vLLM's engine in this process, fed continuously through `SteppedEngine.stream`."""

import gc
import time
from collections.abc import Hashable, Iterable
from typing import Any

from batch_pipeline.core.processes import stop_child_engines
from batch_pipeline.generation.engine.interface import (
    Completion,
    EngineRequest,
    Finished,
    SteppedEngine,
    UnsupportedRequest,
)
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.sampling import prompt_messages, sampling_kwargs


class VllmEngine(SteppedEngine):
    def __init__(self, spec: EngineSpec, metrics: bool = False):
        """`metrics` records vLLM's Prometheus series in this process (the engine host serves them)."""
        from vllm import LLM

        self.spec = spec
        # Per job in the engine host, where registry entries differing only in sampling share the engine.
        self.sampling = spec.sampling
        started = time.monotonic()
        self.llm = LLM(**spec.engine_kwargs, **({"disable_log_stats": False} if metrics else {}))
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

    def _submit(self, request: EngineRequest) -> Hashable:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMValidationError
        from vllm.sampling_params import RequestOutputKind

        ids = self._prompt_ids(request.body)
        kwargs = sampling_kwargs(request.body, self.sampling)
        # Like OpenAI, no max_tokens means "up to the context length" (vLLM's own default is 16).
        kwargs.setdefault("max_tokens", self.max_model_len - len(ids))
        ticket = str(request.row_index)
        try:
            params = SamplingParams(**kwargs, output_kind=RequestOutputKind.FINAL_ONLY)
            self._engine.add_request(ticket, {"prompt_token_ids": ids}, params)
        except (ValueError, VLLMValidationError) as exc:  # vLLM's own per-request validation
            raise UnsupportedRequest(str(exc), getattr(exc, "parameter", None), code="invalid_value") from None
        return ticket

    def _finished(self) -> Iterable[Finished]:
        return [Finished(ticket=output.request_id, prompt_tokens=len(output.prompt_token_ids or []),
                         completions=[Completion(text=c.text, finish_reason=c.finish_reason or "stop",
                                                 tokens=len(c.token_ids)) for c in output.outputs])
                for output in self._engine.step() if output.finished]

    def _abort(self, tickets: list[Hashable]) -> None:
        self._engine.abort_request(tickets)

    def shutdown(self) -> None:
        self._engine.engine_core.shutdown()
        del self._engine, self.llm
        gc.collect()
        stop_child_engines(grace_seconds=10)


_loaded: VllmEngine | None = None


def engine_for(spec: EngineSpec) -> tuple[VllmEngine, bool]:
    """The process keeps one engine: reused for the same spec, replaced (old one freed) otherwise."""
    global _loaded
    if _loaded is not None and _loaded.spec == spec:
        return _loaded, True
    release_engine()
    _loaded = VllmEngine(spec)
    return _loaded, False


def release_engine() -> None:
    global _loaded
    engine, _loaded = _loaded, None
    if engine is not None:
        engine.shutdown()
