"""vLLM's engine in this process, fed continuously through `SteppedEngine.stream`."""

import gc
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from batch_pipeline.core.processes import stop_child_engines
from batch_pipeline.generation.engine.interface import EngineFailure, Finished, LoadedEngine, request_failure
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.engine.vllm.pooling import pooling_kwargs
from batch_pipeline.generation.engine.vllm.prompts import prompts
from batch_pipeline.generation.engine.vllm.sampling import sampling_kwargs
from batch_pipeline.generation.engine.vllm.tool_parsing import (
    AutoToolReader,
    auto_reader,
    read_answer,
    vllm_tool_parser,
)
from batch_pipeline.protocol.answers import Alternative, Completion, EngineRequest, TokenLogprob
from batch_pipeline.protocol.chat import CHAT_COMPLETIONS_URL
from batch_pipeline.protocol.endpoints import ENDPOINTS
from batch_pipeline.protocol.errors import UnsupportedRequest
from batch_pipeline.protocol.responses import RESPONSES_URL, chat_equivalent
from batch_pipeline.protocol.tools import ToolUse, tool_use


@dataclass
class _Group:
    """The engine requests of one batch request: one per prompt of a completions prompt list."""

    top_logprobs: int | None
    echo: bool
    embedding: bool = False
    tools: ToolUse | None = None
    tool_reader: AutoToolReader | None = None  # vLLM's parser, for tool_choice "auto"
    parts: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    outputs: dict[int, Any] = field(default_factory=dict)


@dataclass
class _Planned:
    """A request as vLLM will take it: its group, and each prompt with its parameters."""

    group: _Group
    parts: list[tuple[Any, Any]]
    blame: str | None  # the request parameter vLLM's own validation refers to when it refuses


def _refused(exc: Exception, blame: str | None) -> UnsupportedRequest:
    """vLLM's own per-request validation (e.g. a structured-output grammar, an embedding's `dimensions`)."""
    return UnsupportedRequest(str(exc), getattr(exc, "parameter", None) or blame, code="invalid_value")


def _embeddings(outputs: list[Any]) -> list[Completion]:
    return [Completion(text="", finish_reason="stop", tokens=0, embedding=output.outputs.data.tolist())
            for output in outputs]


class VllmEngine(LoadedEngine):
    def __init__(self, spec: EngineSpec, metrics: bool = False):
        """`metrics` records vLLM's Prometheus series in this process (the engine host serves them)."""
        from vllm import LLM

        self.use(spec)
        if spec.entry.tool_call_parser:  # a registry naming no vLLM parser is refused before loading
            vllm_tool_parser(spec.entry.tool_call_parser)
        started = time.monotonic()
        self.llm = LLM(**spec.engine_kwargs, **({"disable_log_stats": False} if metrics else {}))
        self.load_seconds = time.monotonic() - started
        self._engine = self.llm.llm_engine
        self._tokenizer = self.llm.get_tokenizer()
        self.max_model_len = self._engine.model_config.max_model_len
        self.vocab_size = self._engine.model_config.get_vocab_size()
        self._groups: dict[str, _Group] = {}
        self._lora_ids: dict[tuple[str, str], int] = {}

    def use(self, spec: EngineSpec) -> None:
        self.spec, self.sampling, self.adapter = spec, spec.sampling, spec.adapter

    def _lora_request(self) -> Any:
        from vllm.lora.request import LoRARequest

        if self.adapter is None:
            return None
        # vLLM caches an adapter's weights by id: a new path under the same name must get a new id.
        lora_id = self._lora_ids.setdefault((self.adapter.name, self.adapter.path), len(self._lora_ids) + 1)
        return LoRARequest(self.adapter.name, lora_id, self.adapter.path)

    def _check_endpoint(self, url: str) -> None:
        embeds = self.spec.entry.task == "embed"
        if embeds != ENDPOINTS[url].embeds:
            kind = "an embedding model: it answers /v1/embeddings only" if embeds else \
                "a text generation model: it cannot answer /v1/embeddings"
            raise UnsupportedRequest(f"model '{self.spec.model}' is {kind}", "model", code="invalid_model_for_endpoint")

    def _submit(self, request: EngineRequest) -> Hashable:
        ticket = str(request.row_index)
        planned = self._plan(request)
        self._hand_over(ticket, planned)
        self._groups[ticket] = planned.group
        return ticket

    def _plan(self, request: EngineRequest) -> "_Planned":
        """The vLLM requests an OpenAI request becomes: one prompt and its parameters per prompt of the
        request (a completions prompt list has several), nothing handed to the engine yet."""
        from vllm import PoolingParams, SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        self._check_endpoint(request.url)
        format_field = "text.format" if request.url == RESPONSES_URL else "response_format"
        request = chat_equivalent(request)
        pooling = pooling_kwargs(request.body) if ENDPOINTS[request.url].embeds else None
        kwargs = sampling_kwargs(request.body, self.sampling, request.url) if pooling is None else {}
        structured = kwargs.pop("structured_outputs", None)
        self._check_logit_bias(kwargs.get("logit_bias"))
        tools = tool_use(request.body) if request.url == CHAT_COMPLETIONS_URL else None
        if tools is not None and tools.schema is not None:  # required/named: the answer is the calls' JSON
            structured, format_field = {"json": tools.schema}, "tools"
        reader = auto_reader(tools, self.spec.entry.tool_call_parser, self.spec.model, self._tokenizer)
        if reader is not None:
            kwargs["skip_special_tokens"] = reader.skip_special_tokens
        group = _Group(top_logprobs=kwargs.get("logprobs"), echo=bool(request.body.get("echo")),
                       embedding=pooling is not None, tools=tools, tool_reader=reader)
        # What vLLM's own per-request validation (of what we do not check) is about when it refuses.
        blame = (format_field if structured else None) or ("dimensions" if pooling and "dimensions" in pooling else None)
        parts = []
        for prompt in prompts(self._tokenizer, request, self.max_model_len, tools):
            try:
                params = PoolingParams(**pooling) if pooling is not None else SamplingParams(
                    # Like OpenAI, no max_tokens means "up to the context length" (vLLM's own default is 16).
                    **{"max_tokens": self.max_model_len - len(prompt.ids), **kwargs},
                    structured_outputs=StructuredOutputsParams(**structured) if structured else None,
                    output_kind=RequestOutputKind.FINAL_ONLY)
            except ValueError as exc:
                raise _refused(exc, blame) from None
            parts.append((prompt, params))
        return _Planned(group=group, parts=parts, blame=blame)

    def _hand_over(self, ticket: str, planned: "_Planned") -> None:
        """Adds every part; if vLLM refuses one, those already added are withdrawn."""
        from vllm.exceptions import VLLMValidationError

        lora = self._lora_request()
        part = None
        try:
            for index, (prompt, params) in enumerate(planned.parts):
                part = f"{ticket}#{index}"
                self._engine.add_request(part, {"prompt_token_ids": prompt.ids}, params, lora_request=lora)
                planned.group.parts.append(part)
                planned.group.prompts.append(prompt.text)
        except Exception as exc:
            self._fail_if_dead(exc)
            # The part that raised may be half added (vLLM tracks it before it serializes it for the core).
            self._engine.abort_request([*planned.group.parts, part])
            if not isinstance(exc, ValueError | VLLMValidationError):  # e.g. msgspec's OverflowError
                raise request_failure(exc) from None
            raise _refused(exc, planned.blame) from None

    def _check_logit_bias(self, bias: dict[int, float] | None) -> None:
        """vLLM takes any token id here and indexes the logits with it inside the step, which would fail the
        engine for every request in flight."""
        outside = sorted(token for token in bias or {} if not 0 <= token < self.vocab_size)
        if outside:
            raise UnsupportedRequest(f"Invalid value for 'logit_bias': token id {outside[0]} is outside the "
                                     f"model's vocabulary of {self.vocab_size}", "logit_bias", code="invalid_value")

    def _fail_if_dead(self, exc: Exception) -> None:
        """An engine core that died refuses every request alike: that is the engine's failure, not a 400."""
        from vllm.v1.engine.exceptions import EngineDeadError

        resources = getattr(self._engine.engine_core, "resources", None)
        if isinstance(exc, EngineDeadError) or getattr(resources, "engine_dead", False):
            raise EngineFailure(f"{type(exc).__name__}: {exc}") from exc

    def _finished(self) -> Iterable[Finished]:
        finished = []
        for output in self._engine.step():
            if not output.finished:
                continue
            ticket, _, index = output.request_id.rpartition("#")
            group = self._groups[ticket]
            group.outputs[int(index)] = output
            if len(group.outputs) == len(group.parts):
                del self._groups[ticket]
                try:
                    finished.append(self._answer(ticket, group))
                except Exception as exc:  # reading one answer (e.g. a tool parser) concerns that request only
                    finished.append(Finished(ticket=ticket, error=request_failure(exc, "read the answer to")))
        return finished

    def _answer(self, ticket: str, group: "_Group") -> Finished:
        """Choices in prompt order, then in sampling order within a prompt, as OpenAI numbers them."""
        outputs = [group.outputs[index] for index in range(len(group.parts))]
        return Finished(
            ticket=ticket, prompt_tokens=sum(len(output.prompt_token_ids or []) for output in outputs),
            cached_tokens=sum(output.num_cached_tokens or 0 for output in outputs),
            completions=_embeddings(outputs) if group.embedding else self._choices(outputs, group))

    def _choices(self, outputs: list[Any], group: "_Group") -> list[Completion]:
        return [self._choice(choice, prompt, group)
                for output, prompt in zip(outputs, group.prompts) for choice in output.outputs]

    def _choice(self, choice: Any, prompt: str, group: "_Group") -> Completion:
        text, calls, reason = read_answer(group.tools, group.tool_reader, choice.text, choice.finish_reason or "stop")
        return Completion(text=text, finish_reason=reason, tokens=len(choice.token_ids), tool_calls=calls,
                          logprobs=self._token_logprobs(choice, group.top_logprobs),
                          prompt=prompt if group.echo else "")

    def _token_logprobs(self, choice: Any, top: int | None) -> list[TokenLogprob] | None:
        if top is None or choice.logprobs is None:
            return None
        decoded = []
        for token_id, candidates in zip(choice.token_ids, choice.logprobs):
            chosen = candidates[token_id]
            ranked = sorted((rank, token, logprob) for token, logprob in candidates.items()
                            if (rank := logprob.rank) is not None and rank <= top)
            decoded.append(TokenLogprob(
                token=self._token_text(token_id, chosen), logprob=chosen.logprob,
                top=[Alternative(self._token_text(token, logprob), logprob.logprob) for _, token, logprob in ranked]))
        return decoded

    def _token_text(self, token_id: int, logprob: Any) -> str:
        return logprob.decoded_token if logprob.decoded_token is not None else self._tokenizer.decode([token_id])

    def _abort(self, tickets: list[Hashable]) -> None:
        parts = [part for ticket in tickets if (group := self._groups.pop(ticket, None)) for part in group.parts]
        self._engine.abort_request(parts)

    def shutdown(self) -> None:
        self._engine.engine_core.shutdown()
        del self._engine, self.llm
        gc.collect()
        stop_child_engines(grace_seconds=10)


