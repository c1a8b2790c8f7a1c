"""Environment vLLM needs on this kind of machine, set before vllm is imported."""

import os

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
