"""A cell's manifest: building, reading back, comparing, and what a run does with a changed engine."""

from datetime import UTC, datetime

import pytest

from batch_pipeline.core.names import EXACT_TAG
from batch_pipeline.core.registry import parse_registry
from batch_pipeline.generation.engine.identity import EngineIdentity
from batch_pipeline.generation.engine.spec import EngineSpec
from batch_pipeline.generation.manifest import (
    UNRECORDED,
    CellManifest,
    ManifestError,
    check_manifest,
    exact_requested,
    identity_changes,
    read_manifest,
    write_manifest,
)
from batch_pipeline_tests.support.models import MODEL, TEST_REGISTRY


def _manifest(tmp_path, registry_text: str = TEST_REGISTRY, **fields) -> CellManifest:
    registry = parse_registry(registry_text, "test")
    spec = EngineSpec.of(registry, MODEL, tmp_path)
    return CellManifest(dataset="d-0123456789", model=MODEL, identity=EngineIdentity.of(spec),
                        registry_entry=spec.entry, recorded_at=datetime(2026, 12, 4, 12, 30, tzinfo=UTC), **fields)


@pytest.fixture
def recorded(tmp_path):
    return _manifest(tmp_path)


@pytest.fixture
def warmer(tmp_path):
    return _manifest(tmp_path, TEST_REGISTRY.replace("temperature: 0.0", "temperature: 0.7"))


def test_round_trips_through_its_file_with_the_fingerprint(tmp_path, recorded):
    path = tmp_path / "manifest.json"
    write_manifest(path, recorded)
    assert read_manifest(path) == recorded
    assert '"fingerprint": "' + recorded.identity.fingerprint in path.read_text()
    assert read_manifest(tmp_path / "absent.json") is None


def test_a_damaged_file_is_named_with_its_field(tmp_path, recorded):
    path = tmp_path / "manifest.json"
    write_manifest(path, recorded)
    path.write_text(path.read_text().replace('"vllm": "', '"vllm": 3, "old_vllm": "'))
    with pytest.raises(ManifestError, match=r"manifest .*manifest.json: field 'identity.vllm'.*field 'identity.old_vllm'"):
        read_manifest(path)


def test_changes_name_each_field_old_to_new(tmp_path, recorded, warmer):
    assert identity_changes(recorded.identity, recorded.identity) == []
    assert identity_changes(recorded.identity, warmer.identity) == ["sampling.temperature: 0.0 -> 0.7"]
    args = recorded.identity.engine_args
    moved = recorded.identity.model_copy(update={
        "engine_args": {**args, "max_model_len": 1024, "quantization": "fp8"}, "vllm": "vllm==0.33.0"})
    assert identity_changes(recorded.identity, moved) == [
        "engine_args.max_model_len: 2048 -> 1024", "engine_args.quantization: (none) -> fp8",
        f"vllm: {recorded.identity.vllm} -> vllm==0.33.0"]


def test_the_same_engine_passes_and_keeps_the_earlier_engines_it_lists(recorded):
    kept = recorded.model_copy(update={"earlier_engines": ["abc"]})
    check = check_manifest(kept, recorded, chunks_on_disk=2)
    assert check.problem is None and check.record.earlier_engines == ["abc"]
    assert check_manifest(None, recorded, chunks_on_disk=0).problem is None


def test_a_changed_engine_with_no_chunks_is_a_problem_but_mixes_nothing(recorded, warmer):
    check = check_manifest(recorded, warmer, chunks_on_disk=0)
    assert check.problem == "the engine changed since 2026-12-04 12:30 UTC: sampling.temperature: 0.0 -> 0.7"
    assert check.record == warmer


def test_chunks_of_a_changed_engine_are_named_and_listed_as_earlier(recorded, warmer):
    check = check_manifest(recorded, warmer, chunks_on_disk=3)
    assert "3 chunk(s) on disk came from the recorded one: sampling.temperature: 0.0 -> 0.7" in check.problem
    assert check.record.earlier_engines == [recorded.fingerprint]
    # Back to the first engine: the second one's chunks are the earlier ones now, never itself.
    back = check_manifest(check.record, recorded, chunks_on_disk=4)
    assert back.record.earlier_engines == [warmer.fingerprint]


def test_chunks_without_a_manifest_are_of_an_unknown_engine(recorded):
    check = check_manifest(None, recorded, chunks_on_disk=1)
    assert check.problem == "1 chunk(s) on disk have no manifest: the engine that wrote them is unknown"
    assert check.record.earlier_engines == [UNRECORDED]


@pytest.mark.parametrize(("tags", "exact"), [({}, False), ({EXACT_TAG: "true"}, True), ({EXACT_TAG: "True"}, True),
                                             ({EXACT_TAG: "false"}, False)])
def test_the_exact_tag(tags, exact):
    assert exact_requested(tags) is exact
