"""Environment vLLM needs on this kind of machine, set before vllm is imported."""

import importlib.metadata
import os
from typing import Any

from batch_pipeline.settings import data_dir


def configure_engine_environment() -> None:
    cache = data_dir() / "cache"
    defaults = {
        # Nothing may reach a model hub: weights come from local folders only.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # vLLM CPU: engine start fails without an explicit KV cache size (it reads the NUMA node's
        # memory, not the machine's), and reserving a core for the scheduler costs ~50% throughput.
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        # AOT compile breaks reloading the compile cache, so every start would recompile.
        "VLLM_USE_AOT_COMPILE": "0",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache / "torchinductor"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def _cpu_build() -> bool:
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def platform_engine_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Engine arguments with this platform's fixes, the same for the in-process engine and the server."""
    if _cpu_build():
        # vLLM CPU bug (0.32): a seeded request split across steps by chunked prefill kills the
        # engine ("CPU Generator does not use offset").
        return {"enable_chunked_prefill": False, **kwargs}
    return kwargs


# vLLM sizes its scheduler for interactive use in its OpenAI server and for throughput in the LLM
# class (CPU: 128 vs 256 sequences, 2,048 vs 4,096 tokens a step); a batch server wants the latter.
_CPU_BATCH_SCHEDULING = {"max_num_seqs": 256, "max_num_batched_tokens": 4096}


def server_platform_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = platform_engine_kwargs(kwargs)
    return {**_CPU_BATCH_SCHEDULING, **kwargs} if _cpu_build() else kwargs
