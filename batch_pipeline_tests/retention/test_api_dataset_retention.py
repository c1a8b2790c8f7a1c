"""Through the real API: a batch's dataset (prompts, chunks, partitions) outlives its input upload by
nothing, and its published output stays downloadable after the dataset is gone."""

import logging

import pytest

from batch_pipeline.api.retention import purge_expired_files
from batch_pipeline.core.partitions import DATASETS
from batch_pipeline.retention.datasets import DatasetSweep
from batch_pipeline_tests.support.batches import request_line
from batch_pipeline_tests.support.shim_client import (
    create_batch,
    finish_batch,
    shim_client,
    upload_file,
    validate_batch,
)

LOG = logging.getLogger("test")


@pytest.fixture
def client(pipeline, instance):
    with shim_client(pipeline, instance) as client:
        yield client


def test_a_finished_batch_loses_its_dataset_once_its_input_expired(client, pipeline, instance):
    upload = upload_file(client, [request_line("a"), request_line("b")]).json()
    batch = create_batch(client, upload["id"]).json()
    dataset = validate_batch(pipeline, instance, client, batch["id"])
    finish_batch(pipeline, instance, dataset, ["a", "b"])
    done = client.get(f"/v1/batches/{batch['id']}").json()
    assert done["status"] == "completed"
    store, folder = client.app.state.service.store, pipeline.layout.dataset(dataset).folder

    def sweep(now: float) -> list[str]:
        return DatasetSweep(instance, pipeline.layout, store, 0, now, LOG).run()

    before_expiry = upload["expires_at"] - 1
    assert purge_expired_files(store, before_expiry) == [] and sweep(before_expiry) == []
    assert folder.exists() and dataset in instance.get_dynamic_partitions(DATASETS.name)

    assert purge_expired_files(store, upload["expires_at"]) == [upload["id"]]  # 30 days on: OpenAI's default
    assert sweep(upload["expires_at"]) == [dataset]

    assert not folder.exists() and dataset not in instance.get_dynamic_partitions(DATASETS.name)
    assert client.get(f"/v1/batches/{batch['id']}").json()["status"] == "completed"
    output = client.get(f"/v1/files/{done['output_file_id']}/content")
    assert output.status_code == 200 and output.text.count("\n") == 2
    partial = client.get(f"/v1/batches/{batch['id']}/partial_output")
    assert partial.status_code == 200 and partial.text.count("\n") == 2
