import pytest

from batch_pipeline.core.registry import RegistryError, parse_registry, resolve_engine_kwargs
from batch_pipeline.generation.engine.spec import EngineSpec

VALID = """
models:
  small:
    engine: {model: models/small, dtype: bfloat16, max_model_len: 1024}
    sampling: {max_tokens: 32}
  hub:
    engine: {model: org/some-model}
"""


def test_parses_entries_with_defaults():
    registry = parse_registry(VALID, "registry.yaml")
    assert set(registry.models) == {"small", "hub"}
    assert registry.entry("small").sampling.max_tokens == 32
    assert registry.entry("hub").engine.tensor_parallel_size == 1


def test_unknown_model_lists_registered_names():
    registry = parse_registry(VALID, "registry.yaml")
    with pytest.raises(KeyError, match="registered models: hub, small"):
        registry.entry("missing")


@pytest.mark.parametrize("text, expected", [
    ("models:\n  bad:\n    engine: {model: x, dtype: int3}\n", "model 'bad', field 'engine.dtype'"),
    ("models:\n  bad:\n    engine: {model: x, gpu_memory_utilization: 1.5}\n",
     "model 'bad', field 'engine.gpu_memory_utilization'"),
    ("models:\n  bad:\n    engine: {model: x, max_num_batched: 3}\n", "model 'bad', field 'engine.max_num_batched'"),
    ("models:\n  bad:\n    sampling: {max_tokens: 3}\n", "model 'bad', field 'engine'"),
    ("models: {}\n", "field 'models'"),
    ("models: [unclosed\n", "not valid YAML"),
])
def test_invalid_registry_names_entry_and_field(text, expected):
    with pytest.raises(RegistryError) as caught:
        parse_registry(text, "data/registry.yaml")
    assert "data/registry.yaml" in str(caught.value)
    assert expected in str(caught.value)


def test_model_paths_resolve_beside_the_registry(tmp_path):
    (tmp_path / "models" / "small").mkdir(parents=True)
    registry = parse_registry(VALID, "registry.yaml")
    local = resolve_engine_kwargs(registry.entry("small"), tmp_path)
    assert local["model"] == str((tmp_path / "models" / "small").resolve())
    assert local["max_model_len"] == 1024
    assert resolve_engine_kwargs(registry.entry("hub"), tmp_path)["model"] == "org/some-model"


def test_model_names_must_be_safe_partition_keys():
    with pytest.raises(RegistryError, match="model 'org/model'"):
        parse_registry("models:\n  org/model:\n    engine: {model: x}\n", "registry.yaml")


WITH_ADAPTERS = """
models:
  small:
    engine: {model: models/small}
    sampling: {max_tokens: 32}
    adapters:
      small-terse: {path: adapters/terse}
      small-pirate: {path: org/pirate-lora}
  other:
    engine: {model: org/other}
"""


def test_adapters_are_names_a_batch_may_use_and_run_on_their_models_engine(tmp_path):
    registry = parse_registry(WITH_ADAPTERS, "registry.yaml")
    assert registry.names() == ["other", "small", "small-pirate", "small-terse"]
    assert registry.base_model("small-terse") == "small" and registry.base_model("other") == "other"
    assert registry.entry("small-terse").sampling.max_tokens == 32
    assert registry.adapter("small-terse").path == "adapters/terse" and registry.adapter("small") is None
    (tmp_path / "adapters" / "terse").mkdir(parents=True)
    (tmp_path / "adapters" / "terse" / "adapter_config.json").write_text('{"r": 24}')
    kwargs = resolve_engine_kwargs(registry.entry("small"), tmp_path)
    assert (kwargs["enable_lora"], kwargs["max_loras"], kwargs["max_lora_rank"]) == (True, 2, 32)
    assert "enable_lora" not in resolve_engine_kwargs(registry.entry("other"), tmp_path)

    base = EngineSpec.of(registry, "small", tmp_path)
    adapter = EngineSpec.of(registry, "small-terse", tmp_path)
    assert base.adapter is None and adapter.fingerprint == base.fingerprint
    assert adapter.adapter.path == str((tmp_path / "adapters" / "terse").resolve())
    assert EngineSpec.of(registry, "small-pirate", tmp_path).adapter.path == "org/pirate-lora"


def test_an_adapter_name_must_be_unique():
    text = WITH_ADAPTERS.replace("small-pirate:", "other:")
    with pytest.raises(RegistryError, match="adapter 'other' of model 'small': the name is already"):
        parse_registry(text, "registry.yaml")
