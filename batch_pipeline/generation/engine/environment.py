"""Environment vLLM needs on this kind of machine, set before vllm is imported or a server starts."""

import os
from pathlib import Path

from batch_pipeline.core.processes import ENGINE_OWNER_ENV


def configure_engine_environment(data_dir: Path) -> None:
    # Marks every engine process this one starts, so orphans of this data folder can be found.
    os.environ[ENGINE_OWNER_ENV] = str(data_dir.resolve())
    cache_dir = data_dir / "cache"
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
        "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "torchinductor"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for name, value in defaults.items():
        os.environ.setdefault(name, value)
