"""The code location loads, and every Dagster name the rest of the code relies on exists, once."""

from dagster import AssetKey, Definitions, MultiPartitionsDefinition

from batch_pipeline.core import names
from batch_pipeline.core.partitions import DATASET_MODELS, DATASETS
from batch_pipeline.definitions import defs


def test_the_code_location_loads():
    Definitions.validate_loadable(defs)


def test_jobs_select_the_assets_their_names_promise():
    repository = defs.get_repository_def()
    for asset, job_name in names.JOB_OF_ASSET.items():
        job = repository.get_job(job_name)
        assert job.asset_layer.executable_asset_keys == {asset}


def test_every_named_asset_and_sensor_exists():
    repository = defs.get_repository_def()
    named_assets = {value for value in vars(names).values() if isinstance(value, AssetKey)}
    assert named_assets == set(repository.asset_graph.get_all_asset_keys())
    named_sensors = {value for key, value in vars(names).items() if key.endswith("_SENSOR")}
    assert named_sensors == {sensor.name for sensor in repository.sensor_defs}


def test_the_gpu_asset_holds_the_gpu_pool_on_the_dataset_model_grid():
    graph = defs.get_repository_def().asset_graph
    responses = graph.get(names.RESPONSES_ASSET)
    assert responses.pools == {names.GPU_POOL}
    assert isinstance(responses.partitions_def, MultiPartitionsDefinition)
    assert responses.partitions_def == DATASET_MODELS
    assert graph.get(names.REQUESTS_ASSET).partitions_def == DATASETS
