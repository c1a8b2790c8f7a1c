"""The engine identity: what a model's answers depend on, told from the files without reading weights whole."""

import json
import struct

from batch_pipeline.core.registry import parse_registry
from batch_pipeline.generation.engine.identity import EngineIdentity, folder_identity, results_fingerprint
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline_tests.support.models import MODEL, TEST_REGISTRY


def _safetensors(path, shape: list[int], fill: bytes) -> None:
    header = json.dumps({"w": {"dtype": "BF16", "shape": shape, "data_offsets": [0, 2 * shape[0]]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + fill * shape[0])


def _model_folder(tmp_path, shape=(4,), config='{"layers": 2}', vocab='{"a": 1}'):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    _safetensors(folder / "model.safetensors", list(shape), b"\x01\x02")
    (folder / "config.json").write_text(config)
    (folder / "tokenizer.json").write_text(vocab)
    return folder


def test_a_folder_is_told_by_its_small_files_and_its_safetensors_headers(tmp_path):
    folder = _model_folder(tmp_path)
    before = folder_identity(str(folder))
    assert set(before.files) == {"model.safetensors", "config.json", "tokenizer.json"}
    size = (folder / "model.safetensors").stat().st_size
    assert before.files["model.safetensors"].startswith(f"{size} bytes, header sha256:")
    assert before.files["config.json"].startswith("sha256:")
    assert folder_identity(str(_model_folder(tmp_path))) == before

    reshaped = folder_identity(str(_model_folder(tmp_path, shape=(5,))))
    assert reshaped.files["model.safetensors"] != before.files["model.safetensors"]
    reconfigured = folder_identity(str(_model_folder(tmp_path, config='{"layers": 3}')))
    assert reconfigured.files["config.json"] != before.files["config.json"]
    # The tokenizer hash follows the tokenizer's files only.
    assert reconfigured.tokenizer_hash() == before.tokenizer_hash()
    assert folder_identity(str(_model_folder(tmp_path, vocab='{"b": 1}'))).tokenizer_hash() != before.tokenizer_hash()


def test_a_hub_id_missing_from_the_local_cache_stands_for_itself(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    identity = folder_identity("someone/some-model")
    assert (identity.source, identity.revision, identity.files) == ("someone/some-model", None, {})
    assert identity.tokenizer_hash() == "someone/some-model"


def test_the_fingerprint_follows_every_field_and_not_the_order_of_engine_arguments(tmp_path):
    registry = parse_registry(TEST_REGISTRY, "test")
    spec = EngineSpec.of(registry, MODEL, tmp_path)
    identity = EngineIdentity.of(spec)
    assert identity.vllm.startswith("vllm") and identity.tokenizer.startswith("sha256:")
    assert "model.safetensors" in identity.weights.files
    reordered = identity.model_copy(update={"engine_args": dict(reversed(list(identity.engine_args.items())))})
    assert reordered.fingerprint == identity.fingerprint == results_fingerprint(registry, MODEL, tmp_path)
    edited = parse_registry(TEST_REGISTRY.replace("temperature: 0.0", "temperature: 0.5"), "edited")
    assert results_fingerprint(edited, MODEL, tmp_path) != identity.fingerprint
    parser = identity.model_copy(update={"tool_call_parser": "hermes"})
    assert parser.fingerprint != identity.fingerprint
