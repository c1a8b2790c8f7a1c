"""`batch-pipeline models add`: a hub id (from a loopback stand-in for the hub) or a local folder becomes a
registered model a batch can name, without editing any file by hand; the registry keeps its text."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from batch_pipeline.core.registry import load_registry
from batch_pipeline.core.settings import InputLimits
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.intake.validation import BatchFileScan
from batch_pipeline_tests.support.batches import write_batch
from batch_pipeline_tests.support.fake_hub import fake_hub
from batch_pipeline_tests.support.models import EMBEDDED_MODEL_DIR, MODEL, PROJECT_ROOT, TEST_REGISTRY


@pytest.fixture
def small_model(tmp_path) -> Path:
    """The embedded model's config, tokenizer and chat template, with stand-in weights (nothing loads them)."""
    folder = tmp_path / "small-model"
    folder.mkdir()
    for path in EMBEDDED_MODEL_DIR.iterdir():
        if path.suffix != ".safetensors":
            shutil.copy(path, folder / path.name)
    (folder / "model.safetensors").write_bytes(b"stand-in weights")
    (folder / "README.md").write_text("not needed by vLLM: not downloaded")
    return folder


def _cli(data_root: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("HF_", "BATCH_PIPELINE_", "TRANSFORMERS_"))}
    environment.update(BATCH_PIPELINE_DATA=str(data_root), HF_HOME=str(data_root.parent / "hf-home"), **env)
    return subprocess.run([sys.executable, "-m", "batch_pipeline.cli", *args], env=environment, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=300)


def _usable(data_root: Path, name: str) -> EngineSpec:
    """What a batch naming the model needs: intake validation accepts it, and its engine spec resolves."""
    registry = load_registry(data_root / "registry.yaml")
    batch = write_batch(data_root / "check.jsonl", 3, model=name)
    report = BatchFileScan(batch, set(registry.names()), InputLimits(), registry.embedding_models())
    list(report.rows())
    assert report.report().ok, report.report().errors
    return EngineSpec.of(registry, name, data_root)


def test_a_hub_model_is_downloaded_checked_and_registered(data_root, small_model):
    with fake_hub("someorg/Small-Chat-7B", small_model) as (endpoint, requests):
        done = _cli(data_root, "models", "add", "someorg/Small-Chat-7B", HF_ENDPOINT=endpoint)
    assert done.returncode == 0, done.stderr
    folder = data_root / "models" / "Small-Chat-7B"
    assert sorted(path.name for path in folder.iterdir()) == sorted(
        path.name for path in small_model.iterdir() if path.name != "README.md")
    assert ("GET", "/someorg/Small-Chat-7B/resolve/0123456789abcdef0123456789abcdef01234567/config.json") in requests
    text = (data_root / "registry.yaml").read_text()
    assert text.startswith(TEST_REGISTRY)  # the entries and comments before are untouched
    entry = load_registry(data_root / "registry.yaml").models["Small-Chat-7B"]
    assert (entry.task, entry.engine.model, entry.engine.max_model_len) == ("generate", "models/Small-Chat-7B", 8192)
    spec = _usable(data_root, "Small-Chat-7B")
    assert spec.engine_kwargs["model"] == str(folder.resolve())
    assert "registered Small-Chat-7B" in done.stdout


def test_a_local_folder_is_registered_where_it_is(data_root, small_model):
    done = _cli(data_root, "models", "add", str(small_model), "--name", "my-model", "--max-model-len", "1024",
                HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    entry = load_registry(data_root / "registry.yaml").models["my-model"]
    assert (entry.engine.model, entry.engine.max_model_len) == (str(small_model), 1024)
    assert _usable(data_root, "my-model").engine_kwargs["model"] == str(small_model)
    assert "my-model" in _cli(data_root, "models", "list").stdout


def test_an_embedding_model_is_registered_as_one(data_root):
    embedding = PROJECT_ROOT / "data" / "models" / "all-MiniLM-L6-v2"
    done = _cli(data_root, "models", "add", str(embedding), "--name", "minilm-copy")
    assert done.returncode == 0, done.stderr
    assert load_registry(data_root / "registry.yaml").models["minilm-copy"].task == "embed"


@pytest.mark.parametrize("source, message", [
    ("no/such/thing/here", "neither a model folder nor a hub id"),
    ("someorg/missing", "cannot download someorg/missing"),
])
def test_what_cannot_be_added_is_refused_in_one_line(data_root, small_model, source, message):
    before = (data_root / "registry.yaml").read_text()
    with fake_hub("someorg/Small-Chat-7B", small_model) as (endpoint, _):
        done = _cli(data_root, "models", "add", source, HF_ENDPOINT=endpoint)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert (data_root / "registry.yaml").read_text() == before
    assert not (data_root / "models").exists() or not any((data_root / "models").iterdir())


def test_a_folder_without_a_config_and_a_taken_name_are_refused(data_root, tmp_path):
    (tmp_path / "empty").mkdir()
    done = _cli(data_root, "models", "add", str(tmp_path / "empty"))
    assert done.returncode == 2 and "its config does not load" in done.stderr
    done = _cli(data_root, "models", "add", str(EMBEDDED_MODEL_DIR), "--name", MODEL)
    assert done.returncode == 2 and "already registered" in done.stderr
