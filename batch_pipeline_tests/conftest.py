"""Fixtures and hooks for the whole suite; what tests import as a library is in `support/`."""

from pathlib import Path

import anyio
import pytest
from dagster import instance_for_test

from batch_pipeline.core.resources import PipelineConfig
from batch_pipeline_tests.support.models import ADAPTER, EMBEDDED_MODEL_DIR, TEST_REGISTRY
from batch_pipeline_tests.support.postgres import fresh_database

# anyio imports its parts on first use, and pytest parses (rewrites) them on import, anyio being a
# pytest plugin. CPython 3.11.7's ast.parse is not thread-safe (gh-106905): the first file response
# of a TestClient, imported in its portal thread, failed at random with "AST constructor recursion
# depth mismatch". Every part is imported here, in the main thread, before any test starts a thread.
for _name in dir(anyio):
    getattr(anyio, _name)


@pytest.fixture
def postgres_url():
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    with fresh_database() as url:
        yield url


@pytest.fixture
def instance():
    """A throwaway Dagster instance (test modules that need another define their own)."""
    with instance_for_test() as instance:
        yield instance


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    (root / "registry.yaml").write_text(TEST_REGISTRY)
    return root


@pytest.fixture
def pipeline(data_root: Path) -> PipelineConfig:
    # One engine serves every in-process engine test; it is freed when the session ends.
    return PipelineConfig(data_dir=str(data_root), inbox_settle_seconds=0, keep_engine_loaded=True,
                          engine_mode="in_process")


@pytest.fixture
def server_pipeline(data_root: Path):
    """Runs served by the long-lived vLLM server; the server goes when the test ends."""
    from batch_pipeline.generation.engine.server import stop_server
    from batch_pipeline.generation.engine.server_state import ServerFiles

    config = PipelineConfig(data_dir=str(data_root), inbox_settle_seconds=0, engine_mode="server")
    yield config
    stop_server(ServerFiles(config.layout.engine_server))


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory) -> Path:
    """A rank-8 adapter on the attention projections, randomly initialised (not the no-op default),
    so its answers must differ from the base model's."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("adapter") / ADAPTER
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_DIR, dtype=torch.bfloat16)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _free_the_shared_engine():
    yield
    from batch_pipeline.generation.engine.factory import release_engine

    release_engine()


def pytest_collection_modifyitems(items):
    """Process-spawning engine tests run before the in-process shared engine exists, so two
    engines never share the machine."""
    rank = {"e2e": 1, "engine_subprocess": 2, "engine_server": 3, "engine": 4}

    def order(item):
        marks = [rank[m.name] for m in item.iter_markers() if m.name in rank]
        return min(marks) if marks else 0

    items.sort(key=order)
