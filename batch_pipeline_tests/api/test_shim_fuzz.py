"""Schemathesis generates requests from the shim's own OpenAPI schema: no input may cause a 5xx."""

import tempfile
from pathlib import Path

import schemathesis
from dagster import DagsterInstance
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from batch_pipeline.api.app import create_app
from batch_pipeline.core.settings import Settings
from batch_pipeline_tests.support.models import TEST_REGISTRY


def _fuzzed_app():
    # Built at import: schemathesis parametrizes tests from the schema at collection time.
    root = Path(tempfile.mkdtemp(prefix="shim-fuzz-"))
    (root / "data").mkdir()
    (root / "data" / "registry.yaml").write_text(TEST_REGISTRY)
    (root / "home").mkdir()
    instance = DagsterInstance.local_temp(str(root / "home"))
    # Schemathesis calls the app as "testserver": a configured host name.
    return create_app(Settings(data_dir=root / "data", shim_allowed_hosts="testserver"), instance,
                      refresh_interval_seconds=3600)


schema = schemathesis.openapi.from_asgi("/openapi.json", _fuzzed_app())


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_causes_a_server_error(case):
    case.call_and_validate(checks=[not_a_server_error])
