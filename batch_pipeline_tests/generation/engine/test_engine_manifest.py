"""Reproduce exactly, on the real engine: a cell's manifest, a registry edit refused under the exact tag
before anything is generated, and the recorded engine regenerating the same answers."""

import json
import shutil

import pytest
from dagster import materialize

from batch_pipeline.core.names import EXACT_TAG
from batch_pipeline.core.partitions import MODELS, dataset_model_key
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.generation.manifest import read_manifest
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline_tests.support.models import MODEL, TEST_REGISTRY
from batch_pipeline_tests.support.results import validated_dataset

pytestmark = pytest.mark.engine

KEY = "exact-0123456789"
EXACT = {EXACT_TAG: "true"}


def _responses(instance, pipeline, tags=None):
    return materialize([batch_requests, batch_responses], selection=[batch_responses],
                       partition_key=dataset_model_key(KEY, MODEL), instance=instance,
                       resources={"pipeline": pipeline}, tags=tags, raise_on_error=False)


def _answers(path) -> dict[str, str]:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in lines}


def _metadata(result) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("batch_responses")[0].metadata.items()}


def test_exact_refuses_a_changed_sampling_default_and_regenerates_with_the_recorded_engine(instance, pipeline):
    validated_dataset(instance, pipeline, KEY, 12)
    instance.add_dynamic_partitions(MODELS.name, [MODEL])
    paths = pipeline.layout.responses(KEY, MODEL)
    first = _responses(instance, pipeline)
    assert first.success
    recorded = read_manifest(paths.manifest)
    assert recorded.identity.vllm.startswith("vllm") and recorded.identity.engine_args["dtype"] == "bfloat16"
    assert " bytes, header sha256:" in recorded.identity.weights.files["model.safetensors"]
    assert "config.json" in recorded.identity.weights.files and recorded.earlier_engines == []
    assert _metadata(first)["manifest"] == recorded.model_dump(mode="json")
    answers = _answers(paths.output)
    assert len(answers) == 12

    # Regenerating exactly: the answers go, the manifest stays; the registry meanwhile changed a default.
    shutil.rmtree(paths.chunks)
    paths.output.unlink()
    pipeline.layout.registry.write_text(TEST_REGISTRY.replace("max_tokens: 16", "max_tokens: 8"))
    refused = _responses(instance, pipeline, tags=EXACT)
    assert not refused.success
    [failure] = refused.get_step_failure_events()
    assert "sampling.max_tokens: 16 -> 8" in failure.event_specific_data.error.message
    assert not paths.chunks.exists() and read_manifest(paths.manifest) == recorded

    pipeline.layout.registry.write_text(TEST_REGISTRY)
    again = _responses(instance, pipeline, tags=EXACT)
    assert again.success
    assert _metadata(again)["rows_generated_this_run"] == 12
    assert read_manifest(paths.manifest).fingerprint == recorded.fingerprint
    assert _answers(paths.output) == answers  # greedy, on the recorded engine
