"""Where a shim batch's input goes: which dataset partition it becomes.

Identical resubmissions are new batches (own ids and files), but they reuse the finished results of
the same dataset and model when every request is deterministic (temperature 0, or a fixed seed) and
the engine is the same (weights, engine arguments, default sampling, vLLM: its fingerprint is part of
the key); otherwise the batch gets a dataset of its own and is generated afresh.
"""

import contextlib
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from batch_pipeline.core.layout import DataLayout, dataset_key, file_sha256
from batch_pipeline.core.registry import Registry
from batch_pipeline.core.storage import atomic_path, write_json_atomic
from batch_pipeline.generation.engine.identity import results_fingerprint
from batch_pipeline.intake.provenance import DatasetSource

SHIM_PREFIX = "shim-"


def _is_deterministic(body: object, registry: Registry) -> bool:
    if not isinstance(body, dict):
        return False  # validation names the line
    if body.get("seed") is not None:
        return True
    temperature = body.get("temperature")
    if temperature is None and body.get("model") in registry.names():
        defaults = registry.entry(body["model"]).sampling
        temperature = defaults.temperature
        if defaults.seed is not None:
            return True
    return temperature == 0


def deterministic_models(path: Path, registry: Registry) -> set[str] | None:
    """The models the requests name when every one of them is deterministic, else None."""
    models = set()
    with path.open("rb") as handle:
        for raw in handle:
            if not raw.strip():
                continue
            try:
                body = json.loads(raw)["body"]
                if not _is_deterministic(body, registry):
                    return None
                models.add(str(body.get("model")))
            except (ValueError, KeyError, TypeError, RecursionError):
                return None  # validation will report it; never share a dataset on doubt
    return models


def _engines_of(models: set[str], registry: Registry, registry_dir: Path) -> dict[str, str | None]:
    """Each named model's engine fingerprint (None for a name the registry lacks: validation reports it)."""
    names = set(registry.names())
    return {model: results_fingerprint(registry, model, registry_dir) if model in names else None
            for model in sorted(models)}


def place_batch_input(layout: DataLayout, input_path: Path, file_name: str, batch_id: str,
                      registry: Registry, fresh: bool = False) -> str:
    """`fresh`: a dataset of its own even for deterministic requests (a retry: reusing finished
    results would hand back the very failures it retries)."""
    content_sha256 = file_sha256(input_path)
    models = None if fresh else deterministic_models(input_path, registry)
    if models is None:
        content = hashlib.sha256(f"{content_sha256}:{batch_id}".encode()).hexdigest()
    else:
        engines = json.dumps(_engines_of(models, registry, layout.registry.parent), sort_keys=True)
        content = hashlib.sha256(f"{content_sha256}:{engines}".encode()).hexdigest()
    key = dataset_key(SHIM_PREFIX + file_name, content)
    dataset = layout.dataset(key)
    if dataset.input.exists():
        with contextlib.suppress(FileNotFoundError):  # retention took it meanwhile: placed afresh below
            os.utime(dataset.folder)  # retention spares a folder touched lately (retention.datasets)
    if not dataset.input.exists():
        dataset.folder.mkdir(parents=True, exist_ok=True)
        record = DatasetSource(source="shim", file_name=file_name, bytes=input_path.stat().st_size,
                               accepted_at=time.time(), sha256=content_sha256, batch_id=batch_id)
        write_json_atomic(dataset.source, record.model_dump(exclude_none=True))
        with atomic_path(dataset.input) as temp:
            shutil.copyfile(input_path, temp)
    return key
