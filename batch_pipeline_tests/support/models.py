"""The embedded models the tests run on, and the registries that name them."""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_MODEL_DIR = PROJECT_ROOT / "data" / "models" / "SmolLM2-135M-Instruct"
MODEL = "SmolLM2-135M-Instruct"

# Eager mode starts the engine faster than compiling; short answers keep the suite quick.
TEST_REGISTRY = f"""
models:
  {MODEL}:
    engine:
      model: {EMBEDDED_MODEL_DIR}
      dtype: bfloat16
      max_model_len: 2048
      enforce_eager: true
    sampling:
      max_tokens: 16
      temperature: 0.0
"""

# The embedded model as a second engine (other weights dtype), for model swaps and queue order.
FP32_MODEL = "SmolLM2-fp32"
TWO_ENGINE_REGISTRY = TEST_REGISTRY + f"""  {FP32_MODEL}:
    engine:
      model: {EMBEDDED_MODEL_DIR}
      dtype: float32
      max_model_len: 2048
      enforce_eager: true
    sampling:
      max_tokens: 16
      temperature: 0.0
"""

# The embedded embedding model, for /v1/embeddings batches.
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
EMBEDDING_ENTRY = f"""  {EMBEDDING_MODEL}:
    task: embed
    engine:
      model: {PROJECT_ROOT / "data" / "models" / EMBEDDING_MODEL}
      dtype: float32
      enforce_eager: true
"""

# A LoRA adapter for the embedded model, made by the `lora_adapter` fixture.
ADAPTER = "smol-random-lora"
