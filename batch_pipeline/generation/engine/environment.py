"""Environment vLLM needs on this kind of machine, set before vllm is imported or a server starts."""

import importlib.metadata
import os
from pathlib import Path

from batch_pipeline.core.processes import ENGINE_OWNER_ENV, ENGINE_SLOT_ENV
from batch_pipeline.core.settings import SlotKind
from batch_pipeline.core.slots import DEFAULT_SLOTS, GpuSlot

CUDA_DEVICES_ENV = "CUDA_VISIBLE_DEVICES"
CPU_CORES_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def device_kind(kind: SlotKind) -> SlotKind:
    """`auto` is `cpu` when the installed vLLM is the CPU build (its import name is `vllm` too)."""
    if kind != "auto":
        return kind
    try:
        importlib.metadata.distribution("vllm-cpu")
    except importlib.metadata.PackageNotFoundError:
        return "cuda"
    return "cpu"


def _core_lists(cores: tuple[str, ...], tensor_parallel_size: int) -> str:
    """vllm-cpu binds each tensor-parallel rank to its own core list: "0,1|2,3" for two ranks."""
    ranks = min(tensor_parallel_size, len(cores))
    size, extra = divmod(len(cores), ranks)
    lists, start = [], 0
    for rank in range(ranks):
        end = start + size + (rank < extra)
        lists.append(",".join(cores[start:end]))
        start = end
    return "|".join(lists)


def slot_environment(slot: GpuSlot, kind: SlotKind, tensor_parallel_size: int = 1) -> dict[str, str]:
    """What confines an engine to its slot: the CUDA devices it sees, or on vllm-cpu the cores its
    threads are bound to. The unconfigured slot adds nothing: the engine sees what the machine gives."""
    environment = {ENGINE_SLOT_ENV: str(slot.index)}
    if not slot.configured:
        return environment
    if device_kind(kind) == "cpu":
        return {**environment, CPU_CORES_ENV: _core_lists(slot.devices, tensor_parallel_size)}
    return {**environment, CUDA_DEVICES_ENV: ",".join(slot.devices)}


def configure_engine_environment(data_dir: Path, slot: GpuSlot = DEFAULT_SLOTS[0], kind: SlotKind = "auto",
                                 tensor_parallel_size: int = 1) -> None:
    # Marks every engine process this one starts, so orphans of this data folder and slot can be found.
    os.environ[ENGINE_OWNER_ENV] = str(data_dir.resolve())
    # A slot's variables always win: a process that held another slot before must not keep its devices.
    os.environ.update(slot_environment(slot, kind, tensor_parallel_size))
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
