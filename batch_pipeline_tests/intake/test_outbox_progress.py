"""Outcomes where people look: an inbox batch's results (or why it failed) in data/outbox/ under its own
name, and a GPU run's progress as a run tag the Runs list shows."""

import contextlib
import json

import pytest
from dagster import DagsterInstance, instance_for_test, materialize

from batch_pipeline.core.names import PROGRESS_TAG
from batch_pipeline.core.partitions import DATASETS, MODELS, dataset_model_key
from batch_pipeline.generation import assets as responses_assets
from batch_pipeline.generation.assets import batch_responses
from batch_pipeline.generation.engine.session import EngineUse
from batch_pipeline.generation.partial_outbox import PartialOutbox
from batch_pipeline.intake.assets import batch_requests
from batch_pipeline.intake.inbox import sweep_inbox
from batch_pipeline.intake.outbox import sync_outbox
from batch_pipeline_tests.support.batches import request_line, write_batch, write_jsonl
from batch_pipeline_tests.support.fake_engine import ScriptedEngine
from batch_pipeline_tests.support.models import MODEL


@pytest.fixture
def instance():
    with instance_for_test() as instance:
        instance.add_dynamic_partitions(MODELS.name, [MODEL])
        yield instance


@pytest.fixture
def scripted_engine(monkeypatch):
    @contextlib.contextmanager
    def session(spec, pipeline, rows_to_generate, held):
        yield EngineUse(ScriptedEngine(), "server", False, 1.0)

    monkeypatch.setattr(responses_assets, "engine_session", session)


def _accept(instance: DagsterInstance, pipeline, file_name: str) -> str:
    [outcome] = sweep_inbox(pipeline.layout, pipeline.max_bytes, settle_seconds=0)
    assert outcome.file_name == file_name and outcome.dataset
    instance.add_dynamic_partitions(DATASETS.name, [outcome.dataset])
    return outcome.dataset


def test_a_finished_inbox_batch_lands_in_the_outbox_under_its_name(instance, pipeline, scripted_engine):
    write_batch(pipeline.layout.inbox / "questions.jsonl", 130)
    dataset = _accept(instance, pipeline, "questions.jsonl")
    assert materialize([batch_requests], partition_key=dataset, instance=instance, resources={"pipeline": pipeline}).success
    assert sync_outbox(pipeline.layout) == []  # validated, nothing generated yet
    result = materialize([batch_responses], partition_key=dataset_model_key(dataset, MODEL), instance=instance,
                         resources={"pipeline": pipeline})
    outbox = pipeline.layout.outbox
    assert sorted(path.name for path in sync_outbox(pipeline.layout)) == ["questions.errors.jsonl",
                                                                          "questions.output.jsonl"]
    responses = pipeline.layout.responses(dataset, MODEL)
    assert (outbox / "questions.output.jsonl").read_bytes() == responses.output.read_bytes()
    assert len((outbox / "questions.output.jsonl").read_text().splitlines()) == 130
    assert sync_outbox(pipeline.layout) == []  # up to date: nothing copied twice

    # The run's progress, per chunk, as a tag (the Runs list shows tags; the last one stays).
    tags = instance.get_run_by_id(result.run_id).tags
    assert tags[PROGRESS_TAG].startswith("130/130 rows done, ") and "generated tokens/s, ETA" in tags[PROGRESS_TAG]


def test_progress_tag_is_rewritten_at_each_chunk(instance, pipeline, scripted_engine, monkeypatch):
    write_batch(pipeline.layout.inbox / "three-chunks.jsonl", 250)
    dataset = _accept(instance, pipeline, "three-chunks.jsonl")
    assert materialize([batch_requests], partition_key=dataset, instance=instance, resources={"pipeline": pipeline}).success
    seen = []
    add_run_tags = DagsterInstance.add_run_tags
    monkeypatch.setattr(DagsterInstance, "add_run_tags",
                        lambda self, run_id, tags: (seen.append(tags.get(PROGRESS_TAG)), add_run_tags(self, run_id, tags)))
    assert materialize([batch_responses], partition_key=dataset_model_key(dataset, MODEL), instance=instance,
                       resources={"pipeline": pipeline}).success
    assert [tag.split(" ")[0] for tag in seen if tag] == ["100/250", "200/250", "250/250"]


def test_a_running_inbox_batch_shows_its_lines_so_far_in_the_outbox(instance, pipeline, scripted_engine, monkeypatch):
    write_batch(pipeline.layout.inbox / "long.jsonl", 250)
    dataset = _accept(instance, pipeline, "long.jsonl")
    assert materialize([batch_requests], partition_key=dataset, instance=instance, resources={"pipeline": pipeline}).success
    partial, seen = pipeline.layout.outbox / "long.partial.jsonl", []
    refresh = PartialOutbox.refresh
    monkeypatch.setattr(PartialOutbox, "refresh", lambda self: (refresh(self), seen.append(partial.read_text())))
    assert materialize([batch_responses], partition_key=dataset_model_key(dataset, MODEL), instance=instance,
                       resources={"pipeline": pipeline}).success
    assert [len(text.splitlines()) for text in seen] == [100, 200, 250]  # one refresh per chunk
    assert all(later.startswith(earlier) for earlier, later in zip(seen, seen[1:]))  # lines only added
    responses = pipeline.layout.responses(dataset, MODEL)
    final = responses.output.read_text().splitlines() + responses.errors.read_text().splitlines()
    assert sorted(seen[-1].splitlines()) == sorted(final)
    sync_outbox(pipeline.layout)
    assert not partial.exists() and (pipeline.layout.outbox / "long.output.jsonl").exists()

    # A later file of the same name runs: the finished one's outcome leaves its partial file alone.
    write_batch(pipeline.layout.inbox / "long.jsonl", 120)
    later = _accept(instance, pipeline, "long.jsonl")
    assert later != dataset and materialize([batch_requests], partition_key=later, instance=instance,
                                            resources={"pipeline": pipeline}).success
    partial.write_text(seen[0])  # as its run leaves it after a first chunk
    sync_outbox(pipeline.layout)
    assert partial.read_text() == seen[0]


def test_an_inbox_file_that_fails_validation_leaves_a_note_in_the_outbox(instance, pipeline):
    lines = [request_line("ok-1"), request_line("bad-2", model="no-such-model"), request_line("ok-1")]
    write_jsonl(pipeline.layout.inbox / "broken.jsonl", lines)
    dataset = _accept(instance, pipeline, "broken.jsonl")
    assert not materialize([batch_requests], partition_key=dataset, instance=instance,
                           resources={"pipeline": pipeline}, raise_on_error=False).success
    assert [path.name for path in sync_outbox(pipeline.layout)] == ["broken.error.txt"]
    note = (pipeline.layout.outbox / "broken.error.txt").read_text()
    assert "line 2:" in note and "no-such-model" in note and "line 3:" in note and "duplicate" in note.lower()
    assert str(pipeline.layout.dataset(dataset).input) in note
    assert sync_outbox(pipeline.layout) == []


def test_api_batches_get_no_outbox_files(instance, pipeline):
    write_batch(pipeline.layout.inbox / "api.jsonl", 3)
    dataset = _accept(instance, pipeline, "api.jsonl")
    source = pipeline.layout.dataset(dataset).source
    source.write_text(json.dumps({**json.loads(source.read_text()), "source": "shim"}))
    assert materialize([batch_requests], partition_key=dataset, instance=instance, resources={"pipeline": pipeline}).success
    assert sync_outbox(pipeline.layout) == []
