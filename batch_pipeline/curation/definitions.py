from dagster import Definitions

from batch_pipeline.curation.assets import curated_dataset, curation_export


def curation_definitions() -> Definitions:
    return Definitions(assets=[curation_export, curated_dataset])
