import pytest

from batch_pipeline_tests.support.shim_client import shim_client


@pytest.fixture
def client(pipeline, instance):
    """The shim in process on a throwaway instance (modules that need other settings define their own)."""
    with shim_client(pipeline, instance) as client:
        yield client
