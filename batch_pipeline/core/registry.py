"""The model registry: which models a batch may name, and how vLLM loads each one."""

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

REGISTRY_FILE = "registry.yaml"
# Names become partition keys and folder names.
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")]


class RegistryError(ValueError):
    """The registry file cannot be used; the message names the file, entry and field."""


class EngineArgs(BaseModel):
    """vLLM engine arguments; unknown keys are refused so a typo never silently changes nothing."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="Local folder (relative to the registry) or hub id")
    tokenizer: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32", "half", "float"] = "auto"
    max_model_len: int | None = Field(default=None, gt=0)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    cpu_offload_gb: float = Field(default=0, ge=0)
    quantization: str | None = None
    tensor_parallel_size: int = Field(default=1, gt=0)
    enforce_eager: bool = False
    enable_chunked_prefill: bool | None = None
    max_num_seqs: int | None = Field(default=None, gt=0)
    max_num_batched_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    trust_remote_code: bool = False


class SamplingDefaults(BaseModel):
    """Applied under each request's own fields (the request wins)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = None
    min_p: float | None = Field(default=None, ge=0, le=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    repetition_penalty: float | None = Field(default=None, gt=0)
    seed: int | None = None


class Price(BaseModel):
    """What a hosted API charges for this model (USD per million tokens), so a comparison can show
    what a batch would have cost there."""

    model_config = ConfigDict(extra="forbid")

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_million + completion_tokens * self.output_per_million) / 1e6


class Adapter(BaseModel):
    """A LoRA adapter served by its entry's engine: a batch names it as its `model`."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="A PEFT adapter folder (relative to the registry) or hub id")
    # Read from the folder's adapter_config.json; give it for a hub id (the engine refuses larger ranks).
    rank: int | None = Field(default=None, gt=0)


class RayPlacement(BaseModel):
    """A model whose cells run as a Ray job: `actors` engine replicas, each on its own resources."""

    model_config = ConfigDict(extra="forbid")

    actors: int = Field(default=1, gt=0)
    cpus_per_actor: float = Field(default=1, gt=0)
    # Give it the entry's tensor_parallel_size on a GPU cluster (0: CPU-only, as in the tests).
    gpus_per_actor: float = Field(default=0, ge=0)


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    engine: EngineArgs
    # Which engine serves the entry (generation.engine.factory); vLLM is the one built in.
    runtime: Literal["vllm"] = "vllm"
    # `embed` models answer /v1/embeddings (vLLM's pooling runner); `generate` models the other endpoints.
    task: Literal["generate", "embed"] = "generate"
    # vLLM's name for the parser that reads tool calls out of this model's text (e.g. `hermes`).
    tool_call_parser: str | None = None
    sampling: SamplingDefaults = SamplingDefaults()
    price: Price | None = None
    adapters: dict[ModelName, Adapter] = {}
    ray: RayPlacement | None = None


class Registry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: dict[ModelName, ModelEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_unique(self) -> "Registry":
        seen = set(self.models)
        for model, entry in self.models.items():
            for name in entry.adapters:
                if name in seen:
                    raise ValueError(f"adapter {name!r} of model {model!r}: the name is already a model or adapter")
                seen.add(name)
        return self

    def names(self) -> list[str]:
        """What a batch's `model` may name: every model and every adapter."""
        return sorted([*self.models, *(name for entry in self.models.values() for name in entry.adapters)])

    def base_model(self, name: str) -> str:
        """The model whose engine serves `name`: itself, or the model an adapter belongs to."""
        if name in self.models:
            return name
        for model, entry in self.models.items():
            if name in entry.adapters:
                return model
        raise KeyError(f"model {name!r} is not registered; registered models: {self.names_text()}")

    def entry(self, name: str) -> ModelEntry:
        """The entry of a model, or of the model an adapter belongs to (its engine and defaults)."""
        return self.models[self.base_model(name)]

    def embedding_models(self) -> set[str]:
        """The names that answer /v1/embeddings (and nothing else)."""
        return {name for name in self.names() if self.entry(name).task == "embed"}

    def adapter(self, name: str) -> Adapter | None:
        return self.entry(name).adapters.get(name)

    def names_text(self) -> str:
        return ", ".join(self.names())


def _describe(error: dict[str, Any]) -> str:
    loc = [str(part) for part in error["loc"]]
    if len(loc) >= 2 and loc[0] == "models":
        field = ".".join(loc[2:]) or "(entry)"
        return f"model {loc[1]!r}, field {field!r}: {error['msg']}"
    return f"field {'.'.join(loc) or '(top level)'!r}: {error['msg']}"


def parse_registry(text: str, source: str) -> Registry:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"registry {source}: not valid YAML: {exc}") from None
    try:
        return Registry.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise RegistryError(f"registry {source}: {problems}") from None


def load_registry(path: Path) -> Registry:
    if not path.exists():
        raise RegistryError(f"registry {path}: file not found")
    return parse_registry(path.read_text(encoding="utf-8"), str(path))


# vLLM accepts only these LoRA ranks as `max_lora_rank`.
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_DEFAULT_LORA_RANK = 16


def resolve_path(path: str, registry_dir: Path) -> str:
    """A folder beside the registry when one exists there, else as written (a hub id or absolute path)."""
    return str((registry_dir / path).resolve()) if (registry_dir / path).exists() else path


def _adapter_rank(adapter: Adapter, registry_dir: Path) -> int:
    config = Path(resolve_path(adapter.path, registry_dir)) / "adapter_config.json"
    if adapter.rank is not None or not config.exists():
        return adapter.rank or _DEFAULT_LORA_RANK
    return int(json.loads(config.read_text()).get("r", _DEFAULT_LORA_RANK))


def resolve_engine_kwargs(entry: ModelEntry, registry_dir: Path) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM`; an entry with adapters loads with LoRA enabled for all of them,
    so its base model and every adapter share one engine."""
    kwargs = entry.engine.model_dump(exclude_none=True)
    if entry.task == "embed":
        kwargs["runner"] = "pooling"
    for key in ("model", "tokenizer"):
        if key in kwargs:
            kwargs[key] = resolve_path(kwargs[key], registry_dir)
    if entry.adapters:
        rank = max(_adapter_rank(adapter, registry_dir) for adapter in entry.adapters.values())
        kwargs.update(enable_lora=True, max_loras=len(entry.adapters),
                      max_lora_rank=next((r for r in _LORA_RANKS if r >= rank), rank))
    return kwargs
