import pytest

from batch_pipeline.core.registry import RegistryError, parse_registry, resolve_engine_kwargs

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
